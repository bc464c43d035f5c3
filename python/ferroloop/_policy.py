"""The event-loop policy, kept for code written before `run()`/loop_factory.

asyncio deprecates its policy system in 3.14 (gh-127949; removal in 3.16). ferroloop's
policy API warns exactly where asyncio's does: naming `ferroloop.EventLoopPolicy` warns as
naming `asyncio.DefaultEventLoopPolicy` does, and `install()` as
`asyncio.set_event_loop_policy()` does. Importing ferroloop never warns: on 3.14+ the
package hands the class out from its module `__getattr__`, which warns.
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from typing import Any

from ._loop import Loop

POLICY_DEPRECATED = sys.version_info >= (3, 14)


def _warn_deprecated(what: str, stacklevel: int) -> None:
    warnings.warn(
        f"{what!r} is deprecated, as asyncio's policy system is (removed in Python 3.16); "
        "use ferroloop.run() or loop_factory=ferroloop.new_event_loop",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )


with warnings.catch_warnings():
    # Naming asyncio's policy class warns on 3.14+; this import is not the user's use.
    warnings.simplefilter("ignore", DeprecationWarning)
    _DefaultPolicy: Any = asyncio.DefaultEventLoopPolicy


class EventLoopPolicy(_DefaultPolicy):  # type: ignore[misc]
    """An asyncio policy whose loops are ferroloop loops."""

    def _loop_factory(self) -> Loop:
        return Loop()  # type: ignore[abstract]  # network methods are bound at import


def warn_policy_named(stacklevel: int) -> None:
    """Naming `ferroloop.EventLoopPolicy` warns on 3.14+ (as asyncio's policy names do)."""
    if POLICY_DEPRECATED:
        _warn_deprecated("ferroloop.EventLoopPolicy", stacklevel + 1)


def install() -> None:
    """Make ferroloop the loop that `asyncio.new_event_loop()`/`asyncio.run()` create."""
    if POLICY_DEPRECATED:
        _warn_deprecated("ferroloop.install", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(EventLoopPolicy())
