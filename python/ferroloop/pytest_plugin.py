"""pytest plugin: run pytest-asyncio tests on ferroloop.

Installed with ferroloop (entry point `pytest11: ferroloop`), and off unless asked for::

    pytest --ferroloop              # this run
    [pytest] ferroloop = true       # ini file (pyproject: [tool.pytest.ini_options])
    pytest --no-ferroloop           # this run on the stock loop despite the ini file

When on, every pytest-asyncio test and async fixture runs on a `ferroloop.Loop`:

* pytest-asyncio >= 1.4: through its `pytest_asyncio_loop_factories` hook, answering
  ``{"ferroloop": ferroloop.new_event_loop}``. Each test's `asyncio.Runner` then makes its
  loop with ferroloop's factory; test ids stay as they are (one factory, pytest >= 8.4).
  A `pytest_asyncio_loop_factories` of the project's own conftest.py takes precedence
  (this one is `trylast`), so a project that already chooses its loops keeps its choice.
* pytest-asyncio 0.24 to 1.3 (no such hook): by overriding its `event_loop_policy` fixture
  to return `ferroloop.EventLoopPolicy()`. A project conftest's own `event_loop_policy`
  fixture takes precedence.

Only pytest-asyncio's loops change: code that calls `asyncio.run()` or
`asyncio.new_event_loop()` itself still gets the stock loop (run pytest under
`python -m ferroloop -m pytest` to change those too). When off, the plugin registers
nothing that pytest-asyncio sees and adds nothing to the report header. Disable it
entirely with `-p no:ferroloop`; if plugin autoloading is off
(PYTEST_DISABLE_PLUGIN_AUTOLOAD), enable it with `-p ferroloop.pytest_plugin`.
"""

from __future__ import annotations

import asyncio
import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from . import __version__
from ._policy import EventLoopPolicy
from ._run import new_event_loop

_PLUGIN_NAME = "ferroloop-pytest-asyncio"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ferroloop")
    group.addoption(
        "--ferroloop",
        action="store_true",
        dest="ferroloop",
        default=None,
        help="run pytest-asyncio tests and async fixtures on ferroloop",
    )
    group.addoption(
        "--no-ferroloop",
        action="store_false",
        dest="ferroloop",
        help="run pytest-asyncio tests on the stock loop, whatever the ini file says",
    )
    parser.addini(
        "ferroloop",
        type="bool",
        default=False,
        help="run pytest-asyncio tests and async fixtures on ferroloop (default: false)",
    )


def enabled(config: pytest.Config) -> bool:
    """Whether this run puts pytest-asyncio tests on ferroloop (option, else ini)."""
    option = config.getoption("ferroloop")
    if option is not None:
        return bool(option)
    return bool(config.getini("ferroloop"))


class _LoopFactoriesHook:
    """pytest-asyncio >= 1.4: its loops come from `pytest_asyncio_loop_factories`."""

    mechanism = "via pytest-asyncio's pytest_asyncio_loop_factories hook"

    @pytest.hookimpl(trylast=True)
    def pytest_asyncio_loop_factories(
        self, config: pytest.Config, item: pytest.Item
    ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
        return {"ferroloop": new_event_loop}


def _policy_fixture_plugin() -> types.ModuleType:
    """pytest-asyncio 0.24 to 1.3: its loops come from the `event_loop_policy` fixture.

    A module rather than a class instance: pytest deprecates fixtures that are instance
    methods, and this plugin module itself must not define the fixture (it would then be
    on even when the option is off).
    """

    @pytest.fixture(scope="session", autouse=True, name="event_loop_policy")
    def event_loop_policy() -> Any:
        with warnings.catch_warnings():  # asyncio deprecates policies from 3.14 on
            warnings.simplefilter("ignore", DeprecationWarning)
            return EventLoopPolicy()

    plugin = types.ModuleType(f"{__name__}.event_loop_policy")
    plugin.event_loop_policy = event_loop_policy  # type: ignore[attr-defined]
    plugin.mechanism = "via pytest-asyncio's event_loop_policy fixture"  # type: ignore[attr-defined]
    return plugin


def pytest_configure(config: pytest.Config) -> None:
    if not enabled(config):
        return
    if not config.pluginmanager.hasplugin("asyncio"):
        raise pytest.UsageError(
            "--ferroloop / ferroloop = true runs pytest-asyncio tests on ferroloop, "
            "but pytest-asyncio is not installed or is disabled"
        )
    # Registered now, after every setuptools plugin, so that the fixture override wins
    # over pytest-asyncio's own (fixtures of the same scope: the last registered wins).
    if hasattr(config.hook, "pytest_asyncio_loop_factories"):
        plugin: object = _LoopFactoriesHook()
    else:
        plugin = _policy_fixture_plugin()
    config.pluginmanager.register(plugin, _PLUGIN_NAME)


def pytest_report_header(config: pytest.Config) -> list[str]:
    plugin = config.pluginmanager.get_plugin(_PLUGIN_NAME)
    if plugin is None:
        return []
    mechanism = plugin.mechanism
    return [f"ferroloop: pytest-asyncio tests run on ferroloop {__version__} ({mechanism})"]
