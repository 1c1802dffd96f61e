# Every target creates .venv and installs the project first, so a fresh clone
# needs nothing but python3 (>= 3.10) and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: run test lint bench soak loadtest clean

# `make loadtest` drives the server of `make run` (in another shell) unless told otherwise,
# e.g. `make loadtest LOADTEST_USERS=500 LOADTEST_TIME=5m ARGS='--chat-rate 2'`.
LOCUST_HOST ?= tcp://127.0.0.1:50000
LOADTEST_USERS ?= 200
LOADTEST_SPAWN_RATE ?= 20
LOADTEST_TIME ?= 60s
REPORTS ?= reports

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,loadtest]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/chatsrv serve $(ARGS)

# The suite runs in TEST_JOBS processes (pytest-xdist): most of a test's time is a
# server process starting or a client waiting, so 3 on 2 cores halves the time.
TEST_JOBS ?= 3
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_JOBS) $(ARGS)

# ruff, then mypy (settings in pyproject.toml: strict on chatsrv/core), then the
# import-linter contracts ([tool.importlinter] in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check chatsrv admin tests bench loadtest
	$(VENV)/bin/mypy chatsrv admin
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

# Not part of `make test`: SOAK_S seconds of churn (default 300), then leak and loss checks.
SOAK_S ?= 300
soak: $(STAMP)
	SOAK_S=$(SOAK_S) $(PY) -m bench.soak $(ARGS)

# The extra is re-checked here too: a venv made before it was added lacks Locust.
loadtest: $(STAMP)
	$(PY) -c 'import locust' 2>/dev/null || $(PY) -m pip install -q -e '.[loadtest]'
	mkdir -p $(REPORTS)
	$(VENV)/bin/locust -f loadtest/locustfile.py --headless \
	    -u $(LOADTEST_USERS) -r $(LOADTEST_SPAWN_RATE) -t $(LOADTEST_TIME) \
	    --host $(LOCUST_HOST) --csv $(REPORTS)/loadtest --html $(REPORTS)/loadtest.html $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis reports
