# The two commands a newcomer needs: `make demo` and `make test`. Both set up whatever is missing first.
.PHONY: setup demo test lint bench

setup:
	scripts/setup

demo: setup
	.venv/bin/podbay demo

lint:
	.venv/bin/ruff check src tests
	.venv/bin/mypy

test: setup lint
	.venv/bin/pytest -ra

bench: setup
	.venv/bin/podbay bench create --n 10 --json
