# sign2text: `make demo` runs the whole job on built-in data; `make test` runs the tests.
# Every target installs what it needs first (into .venv), so a fresh clone works.
PY        := .venv/bin/python
MANIFEST  ?= data/demo/small/manifest.csv
CACHE     ?= cache
CONFIG    ?= configs/train/recommended.yaml
RUN       ?= runs/exp1
SPLIT     ?= test
BEAM      ?= 4
JOBS      ?=
FORMAT    ?= zarr
BACKEND   ?= loky
SCHEDULER ?=
RESUME    ?=
DEMO_SCALE ?= full
SEEDS     ?= 1
MESSI     := /usr/share/doc/opencv-doc/examples/data/messi5.jpg
CHROMIUM  := /usr/bin/chromium

.PHONY: setup features train eval demo ablation test lint bench clean-venv

setup: .venv/.installed $(MESSI) $(CHROMIUM)

# torch first and pinned: an unpinned torch pulled in by a dependency is a multi-GB CUDA build,
# while 2.13.0 is the CPU wheel these machines carry.
.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# a real photo of a person for the MediaPipe tests (Debian's opencv-doc)
$(MESSI):
	(apt-get update -qq && apt-get install -y -qq opencv-doc) || \
	  (echo "cannot install Debian's opencv-doc (needed for $(MESSI))"; exit 1)

# headless Chromium for the report.html test (tests/test_report_html.py drives it with Playwright;
# Debian's browser, not a downloaded one: `playwright install` needs the network)
$(CHROMIUM):
	(apt-get update -qq && apt-get install -y -qq chromium chromium-driver) || \
	  (echo "cannot install Debian's chromium (needed for $(CHROMIUM))"; exit 1)

features: setup
	@if [ "$(MANIFEST)" = "data/demo/small/manifest.csv" ] && [ ! -f $(MANIFEST) ]; then \
	  $(PY) -m preprocess synthetic --out data/demo/small --scale small; fi
	$(PY) -m preprocess features --manifest $(MANIFEST) --out $(CACHE) --format $(FORMAT) $(if $(JOBS),--jobs $(JOBS)) \
	  --backend $(BACKEND) $(if $(SCHEDULER),--scheduler $(SCHEDULER))

train: setup
	$(PY) -m s2t train --cache $(CACHE) --config $(CONFIG) --run $(RUN) $(if $(RESUME),--resume)

eval: setup
	$(PY) -m s2t eval --run $(RUN) --split $(SPLIT) --beam $(BEAM)

demo: setup
	$(PY) -m s2t.demo --scale $(DEMO_SCALE) --seeds $(SEEDS)

ablation: setup
	$(PY) -m s2t.demo --scale $(DEMO_SCALE) --ablation --seeds $(SEEDS)

test: setup
	$(PY) -m pytest -q tests

# ruff's rules are in pyproject.toml ([tool.ruff.lint]); ruff itself is a pinned dev extra
lint: .venv/.installed
	.venv/bin/ruff check .

bench: setup
	$(PY) benchmarks/bench_features.py
	$(PY) benchmarks/bench_cache_load.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_scaling.py
	$(PY) benchmarks/bench_eval_memory.py

clean-venv:
	rm -rf .venv
