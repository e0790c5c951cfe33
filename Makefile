# The two commands of the README: `make demo` (set up, then run the main job) and `make test`.
.PHONY: setup demo test test-fast lint

setup:
	scripts/setup.sh

demo: setup
	.venv/bin/aimg export onnx assets/sim-tiny-16 --out runs/artifacts/sim-tiny-16
	.venv/bin/aimg run --sim --task reach --episodes 5 --model runs/artifacts/sim-tiny-16 \
		--video runs/demo-reach.mp4 --out runs/demo-reach.json

test: setup
	.venv/bin/python -m pytest -n 2 --dist loadgroup

test-fast: setup
	.venv/bin/python -m pytest -n 2 --dist loadgroup -m "not slow"

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
