# The two commands in the README: `make serve` and `make test`. Both set up what they need.
.PHONY: setup setup-test serve test lint bench

setup:
	scripts/setup.sh serve

setup-test:
	scripts/setup.sh test

serve: setup
	.venv/bin/vsrt serve $(ARGS)

# Two passes: most tests on two workers (pytest-xdist; each test starts its own server and
# runners; a module marked `xdist_group` stays on one worker, so its module-scoped nodes start
# once), then the few that assert timings (marker `serial`) alone, so the other worker's
# load cannot skew what they measure. A pass that selects nothing (exit 5) is not a failure.
# `make test MARK="not slow"` narrows both passes by marker; ARGS go to pytest as they are.
MARK ?=
ALSO = $(if $(MARK),($(MARK)) and ,)
test: setup-test
	.venv/bin/python -m pytest -p no:cacheprovider -ra --durations=15 -n 2 --dist loadgroup -m "$(ALSO)not serial" $(ARGS); \
	first=$$?; \
	.venv/bin/python -m pytest -p no:cacheprovider -ra --durations=5 -m "$(ALSO)serial" $(ARGS); \
	second=$$?; \
	[ $$first -eq 0 -o $$first -eq 5 ] && [ $$second -eq 0 -o $$second -eq 5 ] && [ $$first -eq 0 -o $$second -eq 0 ]

# `make lint` installs only the linters and what mypy needs to see the code's types: the
# service's dependencies and the test tools (not whisperx and torch; mypy skips those).
LINT_PACKAGES = "ruff>=0.5" "mypy>=1.10" "aiohttp>=3.14.5" "aiosqlite>=0.20" \
	"huggingface_hub>=0.24,<1.0" "pytest>=8" "pytest-aiohttp>=1.0" "playwright>=1.45" \
	"openai>=1.40" "openapi-spec-validator>=0.7" "types-PyYAML" "asyncpg>=0.29"
LINTED = vsrt_service gpu_runner tests bench
PYTHON ?= python3

lint:
	test -x .venv/bin/python || $(PYTHON) -m venv .venv
	.venv/bin/pip install -q --disable-pip-version-check $(LINT_PACKAGES)
	.venv/bin/ruff check $(LINTED)
	.venv/bin/mypy
	.venv/bin/ruff format --check $(LINTED)

bench: setup-test
	.venv/bin/python -m bench.pipeline
