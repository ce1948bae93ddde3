# Edge Diffusion on EKS. `make synth` and `make test` set up .venv and node_modules on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Node 20 is what this machine has; jsii warns on every call otherwise. Errors still show.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export HF_HUB_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
CDK := node_modules/.bin/cdk
CDK8S := node_modules/.bin/cdk8s
CRDS ?= ../shared/crds
STAMP_PY := $(VENV)/.installed
STAMP_NODE := node_modules/.installed

.PHONY: help deps synth manifests test pytest lint diff deploy serve bench imports clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

$(STAMP_PY): requirements.txt requirements-dev.txt runtime/requirements.txt
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(STAMP_NODE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

deps: $(STAMP_PY) $(STAMP_NODE) ## create .venv and node_modules when missing or stale

synth: deps ## synthesize every CloudFormation template (cdk.out/) and Kubernetes manifest (dist/manifests/)
	$(CDK) synth --quiet --output cdk.out
	$(MAKE) --no-print-directory manifests
	@echo "templates: $$(ls cdk.out/*.template.json | wc -l) in cdk.out/; manifests: $$(ls dist/manifests/*.yaml 2>/dev/null | wc -l) in dist/manifests/"

manifests: $(STAMP_PY) ## write the cdk8s charts as plain YAML to dist/manifests/ (kubectl apply / GitOps)
	$(PY) -m charts.render --out dist/manifests

test: deps lint pytest ## lint, type-check and run every test

pytest: deps
	$(PY) -m pytest

lint: $(STAMP_PY) ## ruff, mypy, hadolint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint ci_build/Dockerfile

diff: deps ## cdk diff against the deployed stacks (needs AWS credentials)
	$(CDK) diff

deploy: deps ## cdk deploy every stack (needs AWS credentials and a bootstrapped account)
	$(CDK) deploy --all --require-approval broadening

serve: $(STAMP_PY) ## run the inference server with the tiny model on localhost (demo)
	$(PY) -m runtime.server --model tiny --host 127.0.0.1

bench: $(STAMP_PY) ## benchmark batching vs no batching on the tiny model (prints a table)
	$(PY) -m runtime.bench

# One import of all CRDs together: cdk8s writes one module per API group, so importing the
# CRDs of a group (keda.sh: ScaledObject, TriggerAuthentication, ...) one file at a time
# would leave only the last kind in the module.
imports: $(STAMP_NODE) ## regenerate charts/imports/ from the CRDs in ../shared/crds
	rm -rf charts/imports && mkdir -p charts/imports
	for crd in $(CRDS)/karpenter/*.yaml $(CRDS)/keda/*.yaml $(CRDS)/volcano/*.yaml; do \
	  sed '/^---$$/d' "$$crd"; echo '---'; done > charts/imports/crds.yaml
	$(CDK8S) import --no-check-upgrade charts/imports/crds.yaml --language python --output charts/imports
	rm charts/imports/crds.yaml

clean: ## remove generated output (keeps .venv and node_modules)
	rm -rf cdk.out dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -not -path './.venv/*' -not -path './node_modules/*' -prune -exec rm -rf {} +
