"""The event-loop policy, kept for code written before `run()`/loop_factory."""

from __future__ import annotations

import asyncio
import sys
import warnings

from ._loop import Loop


def _warn_policy_deprecated(what: str) -> None:
    # asyncio deprecates its policy system in 3.14; warn exactly where it warns.
    if sys.version_info >= (3, 14):
        warnings.warn(
            f"{what} is deprecated, as asyncio's policy system is; "
            "use ferroloop.run() or loop_factory=ferroloop.new_event_loop",
            DeprecationWarning,
            stacklevel=3,
        )


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):  # type: ignore[misc,valid-type]
    """An asyncio policy whose loops are ferroloop loops."""

    def __init__(self) -> None:
        _warn_policy_deprecated("ferroloop.EventLoopPolicy")
        super().__init__()

    def _loop_factory(self) -> Loop:  # type: ignore[override]
        return Loop()  # type: ignore[abstract]  # network methods are bound at import


def install() -> None:
    """Make ferroloop the loop that `asyncio.new_event_loop()`/`asyncio.run()` create."""
    _warn_policy_deprecated("ferroloop.install()")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(EventLoopPolicy())
