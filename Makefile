# embedstack: `make serve` runs the gateway, `make test` runs every check.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

WHEELHOUSE := build/wheelhouse

.PHONY: setup serve test lint bench wheelhouse clean

setup: $(STAMP)

# Re-installs only when a pin or the package metadata changed; the package itself is editable.
$(STAMP): payload/requirements.txt tests/requirements.txt payload/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e payload
	touch $@

serve: setup
	$(BIN)/embedstack serve --host 127.0.0.1 --port 8080

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

bench: setup
	$(BIN)/python -m embedstack.bench

# The gateway wheel plus every pinned dependency, so hosts install without an index.
wheelhouse: $(WHEELHOUSE)/.built

$(WHEELHOUSE)/.built: payload/requirements.txt payload/pyproject.toml $(shell find payload/src -name '*.py') | setup
	rm -rf $(WHEELHOUSE).tmp
	$(BIN)/pip download --quiet --disable-pip-version-check --only-binary=:all: \
		-r payload/requirements.txt -d $(WHEELHOUSE).tmp
	$(BIN)/pip wheel --quiet --disable-pip-version-check --no-deps -w $(WHEELHOUSE).tmp ./payload
	rm -rf $(WHEELHOUSE) && mv $(WHEELHOUSE).tmp $(WHEELHOUSE)
	touch $@

clean:
	rm -rf $(VENV) build
