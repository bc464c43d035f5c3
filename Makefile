# The project's contract: CI and the README call these targets.
PY ?= 3.11
VENV := .venvs/$(PY)
# scripts/py.sh runs a venv's python, inside the sid chroot for 3.14 and 3.15.
PYTHON := scripts/py.sh $(PY)
OTHER_PYS := 3.10 3.12 3.13 3.14 3.15
ALL_PYS := 3.10 3.11 3.12 3.13 3.14 3.15
# pytest-xdist workers: most tests wait on sockets, timers and children, so two workers
# on two cores take about 0.65x the time of one.
PYTEST_JOBS ?= 2
PYTEST := -m pytest -q -n $(PYTEST_JOBS)

.PHONY: dev run test test-main test-others wheels conformance upstream soak valgrind bench lint clean

dev:
	@scripts/venv.sh $(PY) requirements/test.txt requirements/net.txt

run: dev
	$(PYTHON) examples/run_all.py

test: test-main test-others

test-main: dev
	$(PYTHON) $(PYTEST)
	PYTHONASYNCIODEBUG=1 $(PYTHON) $(PYTEST) tests/test_loop_core.py tests/test_signals.py tests/test_network.py tests/test_stream_transport.py tests/test_sock_ops.py tests/test_upstream_decisions.py tests/test_sock_close.py tests/test_fd_registry.py tests/test_timer_values.py tests/test_probe_cases.py tests/test_fork.py tests/test_stats.py tests/test_blocking.py tests/test_taskdump.py
	$(PYTHON) tests/conformance/run.py --ci --all
	$(MAKE) --no-print-directory upstream
	scripts/valgrind.sh $(PY)

test-others:
	@for v in $(OTHER_PYS); do \
		echo "== CPython $$v: the whole suite and CPython's test_asyncio"; \
		scripts/venv.sh $$v requirements/test.txt requirements/net.txt || exit 1; \
		scripts/py.sh $$v $(PYTEST) || exit 1; \
		scripts/py.sh $$v tests/conformance/run.py --ci --all || exit 1; \
	done

# One wheel per supported interpreter, into dist/.
wheels:
	@for v in $(ALL_PYS); do \
		scripts/venv.sh $$v || exit 1; \
		scripts/py.sh $$v -m maturin build --release -q -o dist \
			--target-dir target/py$$v -i .venvs/$$v/bin/python || exit 1; \
	done
	@ls dist/*.whl

conformance: dev
	$(PYTHON) tests/conformance/run.py

# uvloop's and anyio's own test suites (tests/upstream), from their pinned sdists; their
# workers mostly wait (threads, sleeps, the watchdog), so 4 at a time on 2 cores.
upstream: dev
	$(PYTHON) -m pip install -q -r requirements/upstream.txt
	$(PYTHON) tests/upstream/run.py --ci -j 4

# The long soak runs (1M callbacks, 200k timers, 50k connections; the quick sizes run in
# `make test`) and a longer differential fuzz; prints the figures.
soak: dev
	@rm -f target/soak-report.jsonl
	FERROLOOP_SOAK=1 FERROLOOP_SOAK_REPORT=$(CURDIR)/target/soak-report.jsonl $(PYTHON) -m pytest -q tests/test_soak.py
	FERROLOOP_FUZZ_EXAMPLES=5000 $(PYTHON) -m pytest -q tests/test_fuzz_differential.py
	@cat target/soak-report.jsonl

# A small program under valgrind over a debug build; fails on an invalid access in ours.
valgrind: dev
	scripts/valgrind.sh $(PY)

bench: dev
	@scripts/venv.sh $(PY) requirements/bench.txt
	$(PYTHON) benchmarks/run.py

lint: dev
	cargo fmt --check
	cargo clippy --release --all-targets -- -D warnings
	$(VENV)/bin/python -m pip install -q mypy ruff typing_extensions
	$(VENV)/bin/ruff check python tests examples benchmarks scripts
	$(VENV)/bin/python -m mypy.stubtest ferroloop --allowlist tests/stubtest-allowlist.txt

clean:
	rm -rf target .venvs
