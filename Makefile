# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs
# what is missing. torch is pinned to the CPU wheel that lies on this machine's disk.
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m fusion.demo

test: $(STAMP)
	$(PY) -m pytest -q

# make bench [BASELINE=.benchmarks/.../0001_x.json] compares with a saved run and fails on regressions
bench: $(STAMP)
	$(PY) -m pytest benchmarks -q --benchmark-json=benchmarks/results.json --benchmark-autosave
	$(PY) -m benchmarks.report benchmarks/results.json $(if $(BASELINE),--compare $(BASELINE) --fail-on-regression)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean-venv:
	rm -rf $(VENV)
