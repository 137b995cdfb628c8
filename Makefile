# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs
# what is missing. torch is pinned to the CPU wheel that lies on this machine's disk.
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-load fuzz bench lint clean-venv chromium rerun-shot

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m fusion.demo

test: $(STAMP) chromium
	$(PY) -m pytest -q

# Debian's Chromium for the check that renders an exported drive in Rerun's web viewer
# (tests/test_rerun_browser.py): installed where this runs as root with apt, else that one test
# is skipped and says why.
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
		|| echo "make: chromium not installed; the Rerun browser check will be skipped"; }

# The picture in the README: the city drive replayed through the committed model (its inputs and
# Detections on one timeline, fusion fleet replay --save), in Rerun's web viewer, headless
# Chromium: out/rerun/city.png
rerun-shot: $(STAMP) chromium
	$(VENV)/bin/fusion fleet replay recordings/city.mcap --no-ray --save out/rerun
	$(PY) -m tests.rerun_screenshot out/rerun/city.replayed.mcap -o out/rerun/city.png

# The process tests (marked slow) while two busy loops hold both cores, as on a shared machine:
# they must wait on events with generous deadlines, never on fixed sleeps or tight ratios.
test-load: $(STAMP)
	$(PY) -m pytest -q -m slow --busy-cores 2
# The long fuzz runs (make test runs each briefly, ~1 min in all): hypothesis sequences of
# messages valid on the wire and hostile in meaning through the fusion node's logic and a real
# model (FUZZ_EXAMPLES), hostile recordings against the reader (FUZZ_RECORDINGS, every kind in
# turn), and FUZZ_MESSAGES hostile messages at a running fusion node and recorder. ~30 min.
FUZZ_EXAMPLES := 2000
FUZZ_RECORDINGS := 300
FUZZ_MESSAGES := 1000000
fuzz: $(STAMP)
	FUSION_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider --timeout=7200 \
		tests/test_hostile_fuzz.py
	$(PY) -m tests.recording_fuzz --cases $(FUZZ_RECORDINGS) --seed 1
	$(PY) -m tests.hostile_flood --messages $(FUZZ_MESSAGES) --seed 1

# make bench [BASELINE=.benchmarks/.../0001_x.json] also compares each benchmark with that saved
# run (pytest-benchmark's --benchmark-compare) and fails when one is slower by more than
# BENCH_FAIL; the report is written either way.
BENCH_FAIL := median:10%
bench: $(STAMP)
	$(PY) -m pytest benchmarks -q --benchmark-json=benchmarks/results.json --benchmark-autosave \
		$(if $(BASELINE),--benchmark-compare=$(BASELINE) --benchmark-compare-fail=$(BENCH_FAIL)); \
	status=$$?; $(PY) -m benchmarks.report benchmarks/results.json && exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean-venv:
	rm -rf $(VENV)
