# The two commands in the README: `make serve` and `make test`. Both set up what they need.
.PHONY: setup setup-test serve test lint bench

setup:
	scripts/setup.sh serve

setup-test:
	scripts/setup.sh test

serve: setup
	.venv/bin/vsrt serve $(ARGS)

test: setup-test
	.venv/bin/python -m pytest -p no:cacheprovider -ra --durations=15 $(ARGS)

lint: setup-test
	.venv/bin/ruff check vsrt_service gpu_runner tests bench
	.venv/bin/mypy

bench: setup-test
	.venv/bin/python -m bench.pipeline
