"""Every behaviour test runs on the stock loop (the oracle) and on ferroloop."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

import ferroloop
import pytest

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    # The stock loop that asyncio.new_event_loop() gives on Linux, named directly so an
    # installed ferroloop policy cannot swap the oracle out.
    "asyncio": asyncio.SelectorEventLoop,
    "ferroloop": ferroloop.new_event_loop,
}


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(params=list(LOOP_FACTORIES))
def loop_factory(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    """The loop factory under test: `asyncio` or `ferroloop`."""
    return LOOP_FACTORIES[request.param]


@pytest.fixture
def loop(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh loop, closed at tear-down; the test fails if it leaked file descriptors."""
    gc.collect()
    before = _open_fds()
    lp = loop_factory()
    try:
        yield lp
    finally:
        if not lp.is_closed():
            lp.close()
        del lp
        gc.collect()
        assert _open_fds() <= before, "file descriptors leaked by the loop"


@pytest.fixture
def unix_dir() -> Iterator[str]:
    """A private directory with a short path (AF_UNIX paths are limited to 107 bytes)."""
    d = tempfile.mkdtemp(prefix="flnet-", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
