# The two commands of the README. Each sets up .venv on first use (see scripts/venv.sh).
.PHONY: quickstart test lint venv

venv:
	@scripts/venv.sh

quickstart: venv
	.venv/bin/lmforge quickstart --overwrite

test: venv
	.venv/bin/python -m pytest -n 2

lint: venv
	.venv/bin/ruff check src tests benchmarks
