# The two commands of the README: `make demo` and `make test`.
# Both install the project (editable, with its dev extras) into .venv first; the
# install reruns only when pyproject.toml changes or .venv is new.

VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.craftmart-installed
# test processes (pytest-xdist), each with its own embedded PostgreSQL: one per CPU, at
# most 4; `make test TEST_JOBS=0` runs the suite in this one process
TEST_JOBS ?= auto

.PHONY: demo test install

demo: $(STAMP)
	$(VENV)/bin/craftmart-batch demo

test: $(STAMP)
	$(PYTHON) -m pytest -n $(TEST_JOBS) --maxprocesses 4 --dist loadgroup $(PYTEST_ARGS)

install: $(STAMP)

$(PYTHON):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@
