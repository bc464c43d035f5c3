"""Every tutorial program in examples/ runs on the stock loop and on ferroloop, the same.

Each program runs in its own interpreter twice: `python examples/X.py` (stock loop) and
`python -m ferroloop examples/X.py` (ferroloop through its CLI, as a user would run it).
The test asserts both exit 0 with identical stdout and stderr, and that stdout is what the
tutorial program prints (EXPECTED below, exactly: asyncio's scheduling is deterministic for
these programs, see examples/run_all.py).

The aiohttp programs (20_, 21_) start their own aiohttp server on 127.0.0.1 and fetch from
it; they need requirements/net.txt, and fail (never skip) without it.

The programs mostly sleep (about 40 s each loop, one after the other), so the first test
starts every selected program on both loops at once and each test then waits for its own
two; the whole module takes about as long as the slowest program (~6 s).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PROGRAMS = sorted(p.stem for p in EXAMPLES.glob("[0-9][0-9]_*.py"))
LOOPS = ("asyncio", "ferroloop")
TIMEOUT = 120  # seconds for one program; the slowest takes ~6 s

# Programs that print "SKIP: ..." and exit 0 before Python 3.11.
NEEDS_311 = {"04_taskgroup", "07_exception_group", "08_timeout", "19_structured_taskgroup"}

_DICTS = [
    "{'name': 'API 1', 'data': 'Data from API 1'}",
    "{'name': 'API 2', 'data': 'Data from API 2'}",
    "{'name': 'API 3', 'data': 'Data from API 3'}",
]
_FETCHING = ["Fetching API 1...", "Fetching API 2...", "Fetching API 3..."]

EXPECTED: dict[str, list[str]] = {
    "01_hello": ["Hello", "World"],
    "02_gather": _FETCHING + _DICTS,  # results in argument order, not completion order
    "03_create_task": ["Tasks are running...", *_FETCHING[:2], " ".join(_DICTS[:2])],
    "04_taskgroup": _FETCHING + _DICTS,
    "05_basic_exception": ["Caught error: Something went wrong!"],
    "06_gather_errors": [
        "Success: Task 1 succeeded",
        "Error: Task 2 failed!",
        "Success: Task 3 succeeded",
    ],
    "07_exception_group": ["Caught: Task 2 failed!"],
    "08_timeout": ["Operation timed out!"],
    "09_wait_for": ["Timed out!"],
    "10_cancel": [
        "Working...",
        "Working...",
        "Working...",
        "Task was cancelled!",
        "Main: Task cancelled successfully",
    ],
    "11_lock": ["Final value: 10"],
    "12_semaphore": [
        line
        for batch in ([0, 1, 2], [3, 4, 5], [6, 7, 8], [9])
        for line in [f"Task {n} starting" for n in batch] + [f"Task {n} done" for n in batch]
    ],
    "13_event": [
        "Task 1 waiting for event...",
        "Task 2 waiting for event...",
        "Setting event!",
        "Task 1 got the event!",
        "Task 2 got the event!",
    ],
    "14_queue": [
        line
        for i in range(10)
        for line in (f"Produced item-{i}", f"Consumer {i % 2 + 1} processing item-{i}")
    ],
    "15_rate_limiter": [f"Fetching https://api.example.com/item/{i}" for i in range(20)],
    "16_async_context_manager": [
        "Connecting to postgres://localhost/db",
        "[{'id': 1, 'name': 'Test'}]",
        "Closing connection",
    ],
    "17_async_iterator": [f"Page {n}: 10 items" for n in range(1, 6)],
    "18_to_thread": [
        "Read 19890 characters, 1000 lines",
        "First line: line 0: some data",
        "Last line: line 999: some data",
        "4 concurrent reads, all the same: True",
        "to_thread ran in a worker thread: True",
    ],
    "19_structured_taskgroup": [
        "task1 started",
        "task2 started",
        "task2 finished",
        "task1 finished",
        "All tasks complete",
    ],
    # The aiohttp programs fetch from a local stand-in for the GitHub API (never the
    # internet); 20_aiohttp_fetch prints its ephemeral port as <port>.
    "20_aiohttp_fetch": [
        f"http://127.0.0.1:<port>/users/{user}: 200" for user in ("python", "microsoft", "google")
    ],
    "21_aiohttp_async_with": [
        line
        for user in (
            "python: Python (Organization, id 1525981), 88 public repos",
            "microsoft: Microsoft (Organization, id 6154722), 7000 public repos",
            "google: Google (Organization, id 1342004), 2700 public repos",
            "no-such-user: 404 Not Found",
        )
        for line in (user, "  session closed: True, response closed: True")
    ],
}

# Programs that need packages of requirements/net.txt (installed by the test command).
NEEDS_NET = {"20_aiohttp_fetch", "21_aiohttp_async_with"}

# Known ferroloop bugs, program -> reason: the stock run must still pass in full, and the
# ferroloop run must differ (a strict xfail: a fixed bug fails here until removed).
FERROLOOP_BUGS: dict[str, str] = {}


def _command(loop: str, program: str) -> list[str]:
    script = str(EXAMPLES / f"{program}.py")
    if loop == "asyncio":
        return [sys.executable, script]
    return [sys.executable, "-m", "ferroloop", script]


@pytest.fixture(scope="module")
def started(
    request: pytest.FixtureRequest,
) -> Iterator[dict[tuple[str, str], subprocess.Popen[str]]]:
    """Every program this session selected, already running on both loops."""
    selected = [
        item.callspec.params["program"]
        for item in request.session.items
        if item.path == Path(__file__) and hasattr(item, "callspec")
    ]
    procs = {}
    try:
        for program in selected:
            for loop in LOOPS:
                procs[program, loop] = subprocess.Popen(
                    _command(loop, program),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                )
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def _result(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args!r} did not finish in {TIMEOUT} s; printed:\n{out}{err}")
    return proc.returncode, out, err


def test_every_program_has_expected_output() -> None:
    assert set(PROGRAMS) == set(EXPECTED)
    assert NEEDS_NET <= set(PROGRAMS)


def test_net_requirements_installed() -> None:
    """The aiohttp programs need aiohttp: a missing install fails here, it never skips."""
    try:
        import aiohttp  # noqa: F401
    except ImportError as exc:
        pytest.fail(
            f"{sorted(NEEDS_NET)} need aiohttp ({exc}): "
            f"{sys.executable} -m pip install -r requirements/net.txt"
        )


@pytest.mark.parametrize("program", PROGRAMS)
def test_example(program: str, started: dict[tuple[str, str], subprocess.Popen[str]]) -> None:
    stock = _result(started[program, "asyncio"])
    ferro = _result(started[program, "ferroloop"])
    assert stock[0] == 0, f"stock loop: exit code {stock[0]}\n{stock[2]}"
    lines = stock[1].splitlines()
    skipped = sys.version_info < (3, 11) and program in NEEDS_311
    if skipped:
        assert len(lines) == 1 and lines[0].startswith(f"SKIP: {program} needs Python 3.11+")
    else:
        assert stock[2] == ""
        assert lines == EXPECTED[program]
    if program in FERROLOOP_BUGS:
        if ferro == stock:
            pytest.fail(f"[XPASS(strict)] known bug did not show: {FERROLOOP_BUGS[program]}")
        pytest.xfail(f"ferroloop bug: {FERROLOOP_BUGS[program]}")
    # Same exit code, stdout and stderr on ferroloop as on the stock loop.
    assert ferro == stock
    if skipped:
        pytest.skip(lines[0])
