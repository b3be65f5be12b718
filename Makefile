# Lightbox: the two commands a newcomer needs are `make run` and `make test`.
# Everything they need is installed here, into .venv; nothing by hand.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
WORKERS ?= 1
PYTEST_ARGS ?=
# `make test` runs the suite in this many pytest-xdist workers, each test file whole in one of
# them (--dist loadfile); the suite mostly waits on relays, browsers, subprocesses and the
# phone app's timers, so on a 2-core machine more workers than cores shorten it. Measured on
# fresh clones (2026-12-07): two 24 min 35 s; three 20 min 35 s and 20 min 18 s; four 18 min
# 33 s, 19 min 10 s and 21 min 45 s (the last with a quarter more CPU for the same tests: the
# machine's own speed moves). One run of three had a phone test fail (a tap lost to a redraw,
# mended in the app), one of four a desktop test (a 423 its lock allows, now allowed).
# TEST_WORKERS=0: one process.
TEST_WORKERS ?= 4

export HOST PORT WORKERS

.PHONY: help install run test lint docs clean system-deps bench demo phone fuzz-api

help:
	@echo "make run     start the relay on 127.0.0.1:8000 (embedded Postgres in .data/pg)"
	@echo "make test    run the whole test suite"
	@echo "make demo    play the whole consult journey (DEMO_INTERACTIVE=1: keep the desktop open)"
	@echo "make lint    ruff + mypy (strict on protocol/) + the hazard log's checker"
	@echo "make fuzz-api schemathesis --checks all against a real relay, anonymous and signed (minutes)"
	@echo "make bench   relay, attachment, clinical-safety and phone-app benchmarks (a few minutes; BENCH_ARGS=--help)"
	@echo "make docs    regenerate the tables in README.md and docs/"
	@echo "make install install into .venv; the commands are then in .venv/bin"
	@echo "make clean   remove .venv, .data and caches"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

# The test IdP (tests/idp: oidc-provider, a certified OpenID provider) from its lock file.
IDP_STAMP := tests/idp/node_modules/.installed
$(IDP_STAMP): tests/idp/package.json tests/idp/package-lock.json
	@command -v npm >/dev/null || { echo "make install: node and npm (Node.js 20 or later) are needed for the test IdP in tests/idp; install them (apt-get install nodejs npm) and run make install again" >&2; exit 1; }
	cd tests/idp && npm ci --no-audit --no-fund --silent
	@touch $@

# The phone app (clients/phone, TypeScript): npm ci from package-lock.json, then the build,
# which prints the bundle's SHA-256. Node.js 20+ and npm are needed (README.md).
PHONE       := clients/phone
PHONE_STAMP := $(PHONE)/node_modules/.installed

$(PHONE_STAMP): $(PHONE)/package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "make: the phone app (clients/phone) needs Node.js 20 or newer and npm, which are not installed; on Debian: apt-get install nodejs npm" >&2; exit 1; }
	cd $(PHONE) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

phone: $(PHONE_STAMP)
	cd $(PHONE) && node build.mjs

# The programs land in .venv/bin; say how to reach them (README.md "Where the commands are").
install: $(STAMP) $(IDP_STAMP) phone
	@echo "Lightbox's commands are in $(BIN) (lightbox-server, lightbox-admin, lightbox, lightbox-gateway, lightbox-phone)."
	@echo "Put them on your PATH: source $(BIN)/activate  (or: export PATH=\"\$$PWD/$(BIN):\$$PATH\")"

# Debian packages some tests drive for real (see .ci/system-deps); a no-op when present.
# orthanc + orthanc-dicomweb: the real PACS the record gateway's tests file into.
# chromium-headless-shell: Debian's Chromium, headless, the real browser the desktop client's
# and the phone app's tests drive (through playwright; tests/browser.py); chromium: the whole
# browser, for the test that opens a consent PDF in its viewer.
# tesseract-ocr + tesseract-ocr-eng: OCR for PHI burned into images (clients/clinician/phi.py);
# poppler-utils: pdftotext reads the patient's consent PDF back in the tests;
# zbar-tools: zbarimg, an independent decoder for the enrolment handout's QR code;
# fonts-dejavu-core: the consent PDF's font and the tests' burned-in labels.
# curl + jq: docs/USER_GUIDE.md scripts the desktop client's HTTP API with them (a test runs it).
# nodejs: runs the test IdP (tests/idp, oidc-provider; Node.js 20 or later, with npm).
system-deps:
	@bash .ci/system-deps orthanc orthanc-dicomweb chromium chromium-headless-shell tesseract-ocr tesseract-ocr-eng poppler-utils fonts-dejavu-core zbar-tools curl jq nodejs

run: $(STAMP)
	$(BIN)/lightbox-server --migrate --host $(HOST) --port $(PORT) --workers $(WORKERS)

# --durations: the slowest tests at the end of every run, to keep the suite in its 20 minutes.
# Bytecode caches written, in .data/cache/python (the suite's caches' folder, tests/conftest.py),
# even where PYTHONDONTWRITEBYTECODE is set, as on CI's machines: the suite starts hundreds of
# Python processes (relays, commands, gateways; four workers each collecting every test file)
# and each compiled the project's modules from source again, 0.25 s of CPU a `lightbox` command.
test: $(STAMP) system-deps $(IDP_STAMP) phone
	@mkdir -p .data
	env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX="$(CURDIR)/.data/cache/python" \
	    $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20 $(PYTEST_ARGS)

lint: $(STAMP) $(PHONE_STAMP)
	cd $(PHONE) && npx --no-install tsc --noEmit -p .
	$(BIN)/ruff check --cache-dir .ruff_cache .  # one cache, not one per folder ruff.toml
	$(BIN)/mypy --strict protocol
	$(BIN)/mypy server clients scripts tests  # tests/ too: the same settings as server/
	$(BIN)/lint-imports --no-cache  # layers and import cycles (pyproject.toml [tool.importlinter])
	@# Every hazard's control names tests that exist (docs/HAZARD_LOG.md).
	$(BIN)/python scripts/check_hazard_log.py
	@# The desktop page's script: a syntax error would leave the page blank (node is on these
	@# machines; the check is skipped with a note where it is missing).
	@if command -v node >/dev/null; then node --check clients/desktop/static/app.js; \
	else echo "lint: node not found, clients/desktop/static/app.js not checked"; fi

# The whole journey with the real programs (scripts/demo.py); data in .data/demo, made afresh.
demo: $(STAMP)
	@mkdir -p .data
	$(BIN)/python scripts/demo.py

# schemathesis over every operation, all phases, anonymous and as a device and IT (through
# tests/signing_proxy.py); exceptions the schema cannot state are in schemathesis.toml.
FUZZ_EXAMPLES ?= 50
fuzz-api: $(STAMP)
	@mkdir -p .data
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_PHASES=examples,coverage,fuzzing,stateful \
		$(BIN)/python -m pytest tests/server/test_fuzz_api.py -q

# The relay benchmark (docs/BENCHMARKS.md); not part of `make test`.
bench: $(STAMP) phone
	@mkdir -p .data
	$(BIN)/python -m bench.relay $(BENCH_ARGS)
	$(BIN)/python -m bench.attachments
	$(BIN)/python -m bench.safety
	$(BIN)/python -m bench.phone
	$(BIN)/python -m bench.startup

docs: $(STAMP)
	$(BIN)/python -m server.doctables

clean:
	rm -rf $(VENV) .data build *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artefacts tests/idp/node_modules
	rm -rf $(PHONE)/node_modules $(PHONE)/dist $(PHONE)/dist-test
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
