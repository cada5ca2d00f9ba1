# The two commands in the README: `make demo` and `make test`. Both set up first (idempotent).
.PHONY: setup demo test lint bench clean

PY := .venv/bin/python

setup:
	bash scripts/setup.sh

demo: setup
	$(PY) -m molmoact2.cli demo

test: setup
	bash scripts/run_tests.sh

lint: setup
	.venv/bin/ruff check .

bench: setup
	$(PY) bench/model.py
	$(PY) bench/executor.py

clean:
	rm -rf .venv ros2_ws/build ros2_ws/install ros2_ws/log out
