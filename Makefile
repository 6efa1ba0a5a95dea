# make demo / make test / make bench: each creates .venv and installs the project first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dmsweep-installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	bash examples/quickstart.sh

test: $(STAMP)
	$(PY) -m pytest -q

# Each benchmark's JSON goes to bench/out/NAME.json and the terminal. bench_regression makes its
# real sweep (bench/specs/mnist1d_4608.yaml, ~10 min on 2 cores) when runs/ does not hold it yet.
bench: $(STAMP)
	@mkdir -p bench/out
	@for script in bench/bench_*.py; do name=$$(basename $$script .py); echo "== $$script -> bench/out/$$name.json" >&2; \
		$(PY) $$script > bench/out/$$name.json || exit 1; cat bench/out/$$name.json; done

clean:
	rm -rf runs/ .pytest_cache
