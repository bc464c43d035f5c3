"""Networking and subprocesses around the Rust transports, for now: asyncio's own
selector-loop implementation (BaseSelectorEventLoop and the Unix loop) bound to `Loop`,
running over the Rust poller (the stream, datagram and pipe transports it makes are
ferroloop's: `Loop._make_*_transport`).

Everything those classes define that `Loop` does not is bound, except their private
plumbing of the selector, the self-pipe and the run step, which the Rust core replaces.
The Rust transports of the networking milestone take these over one by one.
"""

from __future__ import annotations

import types
from asyncio import base_events, selector_events, unix_events

_SOURCES: tuple[type, ...] = (
    unix_events._UnixSelectorEventLoop,  # type: ignore[attr-defined]
    selector_events.BaseSelectorEventLoop,
    base_events.BaseEventLoop,
)

# The selector loops' own machinery, which ferroloop's core replaces.
_REPLACED = frozenset(
    {
        "__init__",
        "__del__",
        "close",
        "run_forever",
        "_run_forever_setup",
        "_run_forever_cleanup",
        "_run_once",
        "_process_events",
        "_make_self_pipe",
        "_close_self_pipe",
        "_read_from_self",
        "_write_to_self",
        "_process_self_data",
        "_add_callback",
        "_add_callback_signalsafe",
        "_handle_signal",
        "_call_soon",
    }
)


def _needs_port(name: str, source: type) -> types.FunctionType:
    def method(self: object, *args: object, **kwargs: object) -> None:
        raise NotImplementedError(
            f"ferroloop: {source.__name__}.{name} uses super() and is not ported yet"
        )

    method.__name__ = method.__qualname__ = name
    return method  # type: ignore[return-value]


def bind_network_methods(cls: type) -> list[str]:
    """Binds to `cls` every function of the selector loops it lacks; returns their names."""
    bound = []
    own = {
        name
        for klass in cls.__mro__
        if klass.__module__.startswith("ferroloop")
        for name in vars(klass)
    }
    for source in _SOURCES:
        for name, value in vars(source).items():
            if name in own or name in _REPLACED or name in bound:
                continue
            if not isinstance(value, types.FunctionType):
                continue
            if "__class__" in value.__code__.co_freevars:
                # Zero-argument super() cannot work on Loop, which does not inherit from
                # the selector loops: such a function needs a port of its own in Loop.
                value = _needs_port(name, source)
            setattr(cls, name, value)
            bound.append(name)
    cls._network_methods = tuple(bound)  # type: ignore[attr-defined]
    return bound
