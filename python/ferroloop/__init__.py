"""ferroloop: a drop-in asyncio event loop with a Rust core."""

from __future__ import annotations

from ._loop import Loop
from ._policy import EventLoopPolicy, install
from ._run import new_event_loop, run

__version__ = "0.1.0"

__all__ = ("EventLoopPolicy", "Loop", "install", "new_event_loop", "run")
