"""pytest-asyncio on ferroloop: the `--ferroloop` option of ferroloop's pytest plugin.

Runs the tutorial's own pytest-asyncio tests (tests/pytest_asyncio_suite/tutorial_suite.py)
in real pytest subprocesses, in a temporary directory with its own pytest.ini, so that the
plugin is loaded the way users get it (the `pytest11` entry point) and its options are
parsed for real. The suite checks which loop its tests and async fixtures ran on
(FERROLOOP_SUITE_EXPECT). The subprocesses all start at once, when the first test asks for
them, since most of their time is the tutorial's sleeps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

SUITE = Path(__file__).resolve().parent / "pytest_asyncio_suite" / "tutorial_suite.py"
INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""
TUTORIAL_TESTS = ("test_async_function", "test_with_timeout", "test_with_fixture")
HEADER = "ferroloop: pytest-asyncio tests run on ferroloop"


class Run(NamedTuple):
    args: tuple[str, ...]  # pytest's command line, after `python -m pytest`
    ini: str  # lines added to pytest.ini
    expect: str  # the loop the suite's tests must find: "ferroloop" or "asyncio"


RUNS = {
    "option": Run(("--ferroloop",), "", "ferroloop"),
    "default": Run((), "", "asyncio"),
    "ini": Run(("-k", "loop"), "ferroloop = true\n", "ferroloop"),
    "ini_overridden": Run(("-k", "loop", "--no-ferroloop"), "ferroloop = true\n", "asyncio"),
    "ini_false": Run(("-k", "loop"), "ferroloop = false\n", "asyncio"),
    "no_pytest_asyncio": Run(("--ferroloop", "-p", "no:asyncio"), "", "ferroloop"),
}


class Result(NamedTuple):
    returncode: int
    output: str


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Result]]:
    env = dict(os.environ)
    for name in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_ADDOPTS", "PYTEST_PLUGINS"):
        env.pop(name, None)
    procs = {}
    try:
        for name, run in RUNS.items():
            where = tmp_path_factory.mktemp(name)
            (where / "test_tutorial.py").write_text(SUITE.read_text())
            (where / "pytest.ini").write_text(INI + run.ini)
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *run.args],
                cwd=where,
                env={**env, "FERROLOOP_SUITE_EXPECT": run.expect},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        results = {}
        for name, p in procs.items():
            out, _ = p.communicate(timeout=120)
            results[name] = Result(p.returncode, out)
        yield results
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.communicate()


def test_tutorial_tests_run_on_ferroloop_with_option(results: dict[str, Result]) -> None:
    rc, out = results["option"]
    assert rc == 0, out
    for test in (*TUTORIAL_TESTS, "test_loop", "test_loop_module_scope"):
        # Test ids are unchanged: no "[ferroloop]" suffix.
        assert f"test_tutorial.py::{test} PASSED" in out, out
    assert "5 passed" in out and HEADER in out, out


def test_tutorial_tests_run_on_stock_loop_by_default(results: dict[str, Result]) -> None:
    rc, out = results["default"]
    assert rc == 0, out
    for test in (*TUTORIAL_TESTS, "test_loop", "test_loop_module_scope"):
        assert f"test_tutorial.py::{test} PASSED" in out, out
    assert "5 passed" in out and HEADER not in out, out


def test_ini_option(results: dict[str, Result]) -> None:
    rc, out = results["ini"]
    assert rc == 0, out
    assert "2 passed" in out and HEADER in out, out


@pytest.mark.parametrize("run", ["ini_overridden", "ini_false"])
def test_ini_option_off(results: dict[str, Result], run: str) -> None:
    rc, out = results[run]
    assert rc == 0, out
    assert "2 passed" in out and HEADER not in out, out


def test_option_without_pytest_asyncio_is_a_usage_error(results: dict[str, Result]) -> None:
    rc, out = results["no_pytest_asyncio"]
    assert rc == pytest.ExitCode.USAGE_ERROR, out
    assert "pytest-asyncio is not installed or is disabled" in out, out


def test_help_lists_the_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--ferroloop" in out and "--no-ferroloop" in out
    assert "ferroloop (bool)" in out
