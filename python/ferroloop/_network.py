"""The public cold paths of asyncio's `base_events.BaseEventLoop` bound to `Loop`: name
resolution, `create_connection` (happy eyeballs included), `create_datagram_endpoint`'s
address handling, `sendfile`'s checks and fallback, `connect_*_pipe`, `subprocess_*`'s
argument checks. They are the same code on every event loop (uvloop's included) and
only call the loop's public methods and the `_make_*_transport` factories, which are
ferroloop's own; no function of the selector loops (selector_events, unix_events) is
bound.

Everything `BaseEventLoop` defines that `Loop` does not is bound, except the run step's
private plumbing, which the Rust core replaces.
"""

from __future__ import annotations

import types
from asyncio import base_events

_SOURCES: tuple[type, ...] = (base_events.BaseEventLoop,)

# The base loop's own machinery, which ferroloop's core replaces.
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
