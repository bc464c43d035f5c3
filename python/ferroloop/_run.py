"""`run()` and `new_event_loop()`, the main API (asyncio is retiring policies)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._loop import Loop

_T = TypeVar("_T")


def new_event_loop() -> Loop:
    """Return a new ferroloop event loop."""
    return Loop()  # type: ignore[abstract]  # network methods are bound at import


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Run a coroutine on a new ferroloop loop, as `asyncio.run()` does."""
    if asyncio.events._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=new_event_loop, debug=debug) as runner:
            return runner.run(main)
    return _run_310(main, debug)


def _run_310(main: Coroutine[Any, Any, _T], debug: bool | None) -> _T:
    # Python 3.10 has no asyncio.Runner: mirror asyncio.run() step by step.
    from asyncio.runners import _cancel_all_tasks  # type: ignore[attr-defined]

    if not asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    loop = new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
