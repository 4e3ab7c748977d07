# The two commands a user needs (see README): `make demo` and `make test`.
PY := .venv/bin/python

.PHONY: setup demo test bench clean
setup:
	bash scripts/setup.sh

demo: setup
	$(PY) pipelines/demo.py

test: setup
	$(PY) -m pytest -q -x --timeout=900

bench: setup
	$(PY) bench/memory_scaling.py

clean:
	rm -rf outputs
