# Two commands from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.siamssl-installed
RUN_DIR ?= runs/quickstart-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

demo: install
	$(PY) -m siamssl.train --config configs/quickstart.yaml output_dir=$(RUN_DIR)
	@echo "Results: $(RUN_DIR)/summary.json (metrics: $(RUN_DIR)/metrics.jsonl)"

test: install
	$(PY) -m pytest

bench: install
	$(PY) scripts/bench_throughput.py --device auto

clean:
	rm -rf runs .pytest_cache
