"""ferroloop: a drop-in asyncio event loop with a Rust core."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _policy
from ._loop import Loop
from ._observe import BlockingDetector, BlockingReport, detect_blocking
from ._policy import install
from ._run import new_event_loop, run
from ._taskdump import dump_tasks

__version__ = "0.1.0"

__all__: tuple[str, ...] = (
    "BlockingDetector",
    "BlockingReport",
    "Loop",
    "detect_blocking",
    "dump_tasks",
    "install",
    "new_event_loop",
    "run",
)

if TYPE_CHECKING or not _policy.POLICY_DEPRECATED:
    from ._policy import EventLoopPolicy

    __all__ += ("EventLoopPolicy",)
else:

    def __getattr__(name: str) -> Any:
        # 3.14+: naming `ferroloop.EventLoopPolicy` warns, as naming
        # `asyncio.DefaultEventLoopPolicy` does (asyncio's module __getattr__ too).
        if name == "EventLoopPolicy":
            _policy.warn_policy_named(stacklevel=2)
            return _policy.EventLoopPolicy
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
