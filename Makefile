# The two commands of the README. Each sets up .venv on first use (see scripts/venv.sh).
.PHONY: quickstart test lint venv

venv:
	@scripts/venv.sh

quickstart: venv
	.venv/bin/lmforge quickstart --overwrite

test: venv
	.venv/bin/python -m pytest -n 2

# The rules of docs/architecture.md: ruff's checks, one format (ruff format), and the layer contract (.importlinter).
lint: venv
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/ruff format --check src tests benchmarks
	.venv/bin/lint-imports
