# The two commands of the README: `make demo` (set up, then run the main job) and `make test`.
.PHONY: setup demo test test-fast lint

setup:
	scripts/setup.sh

demo: setup
	.venv/bin/aimg bench codec

test: setup
	.venv/bin/python -m pytest -n 2 --dist loadgroup

test-fast: setup
	.venv/bin/python -m pytest -n 2 --dist loadgroup -m "not slow"

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
