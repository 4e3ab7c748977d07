# The two commands a user needs (see README): `make demo` and `make test`.
PY := .venv/bin/python

.PHONY: setup demo test lint format bench clean
setup:
	bash scripts/setup.sh

demo: setup
	$(PY) pipelines/demo.py

test: setup
	$(PY) -m pytest -q -x -n 2 --dist loadfile --timeout=900 --durations=25

# lint: what CI checks (ruff's rules and formatting, config in pyproject.toml); format: fix what it can
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: setup
	for b in memory_scaling infer_scaling forcing_cost prep_throughput stream_encode decode_bounds; do $(PY) -m bench.$$b || exit 1; done
	$(PY) -m bench.prep_throughput --size 360x640
	$(PY) -m bench.zero3_memory --double-layers 2 --single-layers 6
	$(PY) -m bench.zero3_memory --label f1-scaled-0.44B
	$(PY) -m bench.stream_memory
	$(PY) -m bench.method_fidelity

clean:
	rm -rf outputs
