"""The tutorial's pytest-asyncio tests (section "Testing Async Code"), verbatim.

Not collected by the project's own test run (the name does not start with test_):
tests/test_pytest_asyncio.py copies it to a temporary directory as test_tutorial.py and
runs pytest there in a subprocess, with and without `--ferroloop`, in asyncio_mode=auto
(the tutorial's async fixture uses plain @pytest.fixture, which strict mode ignores).
FERROLOOP_SUITE_EXPECT ("ferroloop" or "asyncio") tells it which loop it should be on.
"""

import asyncio
import os

import ferroloop
import pytest

# --- The helpers the tutorial's tests call, which it does not show -----------------------

# From the tutorial's "Coroutines vs Regular Functions".
async def async_task():
    await asyncio.sleep(2)
    return "Done"


# From the tutorial's "Using asyncio.timeout()".
async def slow_operation():
    await asyncio.sleep(10)
    return "Done"


class Connection:
    """A stand-in database connection."""

    def __init__(self):
        self.closed = False

    async def query(self, sql: str) -> list:
        await asyncio.sleep(0.1)
        return [{"?column?": 1}]

    async def close(self):
        await asyncio.sleep(0.1)
        self.closed = True


async def create_connection():
    await asyncio.sleep(0.1)
    return Connection()


# --- The tutorial's tests ------------------------------------------------------------------

@pytest.mark.asyncio
async def test_async_function():
    result = await async_task()
    assert result == "Done"

@pytest.mark.asyncio
async def test_with_timeout():
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(slow_operation(), timeout=1.0)

# Fixtures
@pytest.fixture
async def db_connection():
    conn = await create_connection()
    yield conn
    await conn.close()

@pytest.mark.asyncio
async def test_with_fixture(db_connection):
    result = await db_connection.query("SELECT 1")
    assert result is not None


# --- Which loop ran them -------------------------------------------------------------------

EXPECTED_LOOP = os.environ.get("FERROLOOP_SUITE_EXPECT")


def check_loop(loop: asyncio.AbstractEventLoop) -> None:
    if EXPECTED_LOOP is None:
        pytest.skip("FERROLOOP_SUITE_EXPECT is not set")
    if EXPECTED_LOOP == "ferroloop":
        assert isinstance(loop, ferroloop.Loop), type(loop)
    else:
        assert EXPECTED_LOOP == "asyncio"
        assert isinstance(loop, asyncio.BaseEventLoop), type(loop)
        assert not isinstance(loop, ferroloop.Loop), type(loop)


@pytest.fixture
async def fixture_loop():
    loop = asyncio.get_running_loop()
    yield loop
    assert asyncio.get_running_loop() is loop  # the teardown runs on it too


@pytest.mark.asyncio
async def test_loop(fixture_loop):
    loop = asyncio.get_running_loop()
    check_loop(loop)
    assert fixture_loop is loop


@pytest.mark.asyncio(loop_scope="module")
async def test_loop_module_scope():
    check_loop(asyncio.get_running_loop())
