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
TSC := node_modules/.bin/tsc
SDK := sdk/typescript
CRDS ?= third_party
STAMP_PY := $(VENV)/.installed
STAMP_NODE := node_modules/.installed

.PHONY: help deps synth manifests test pytest sdk sdk-test demo lint fmt diff preflight deploy deploy-build deploy-pipeline destroy serve bench imports clean

# One deploy path per deployment (plan/deployments.py): the build infrastructure once per account
# and Region, then a deployment (deployments/$(DEPLOYMENT).json) from this workstation. The ones
# named in pipeline.deployments are the deploy pipeline's, not `make deploy`'s.
DEPLOYMENT ?= dev
CONTEXT ?=
CDK_ARGS = -c deployment=$(DEPLOYMENT) $(CONTEXT)
# Targets that act on no deployment refuse DEPLOYMENT=... in one line rather than ignore it.
NO_DEPLOYMENT = $(if $(filter command line environment,$(origin DEPLOYMENT)),$(error make $(or $(firstword $(MAKECMDGOALS)),$@) acts on no deployment: drop DEPLOYMENT=$(DEPLOYMENT) (synth, manifests, diff, preflight, cost, deploy and destroy take it)))

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

synth: deps ## synthesize the templates (cdk.out/) and Kubernetes manifests (dist/manifests/) of DEPLOYMENT (default dev); CONTEXT='-c key=value ...'
	rm -rf cdk.out  # no stale stack of an earlier config left beside the new ones
	$(CDK) synth --quiet --output cdk.out $(CDK_ARGS)
	$(MAKE) --no-print-directory manifests
	@echo "templates: $$(ls cdk.out/*.template.json | wc -l) in cdk.out/; manifests: $$(ls dist/manifests/*.yaml 2>/dev/null | wc -l) in dist/manifests/"

manifests: $(STAMP_PY) ## write DEPLOYMENT's cdk8s charts as plain YAML to dist/manifests/ (kubectl apply / GitOps)
	$(PY) -m charts.render --out dist/manifests $(CDK_ARGS)

test: deps lint pytest sdk-test ## lint, type-check and run every test (Python, and the TypeScript SDK's)

pytest: deps sdk
	$(NO_DEPLOYMENT)
	$(PY) -m pytest

sdk: $(STAMP_NODE) ## build the TypeScript device SDK (sdk/typescript/dist/), its tests and its browser demo; `npm pack` in sdk/typescript makes its tarball
	$(NO_DEPLOYMENT)
	rm -rf $(SDK)/dist $(SDK)/dist-test $(SDK)/demo/dist
	$(TSC) -p $(SDK)
	$(TSC) -p $(SDK)/tsconfig.core.json
	$(TSC) -p $(SDK)/test
	$(TSC) -p $(SDK)/demo
	$(TSC) -p $(SDK)/demo/tsconfig.server.json

DEMO_ARGS ?= --api http://127.0.0.1:7860 --port 8080
demo: sdk ## the SDK's browser demo (camera as image prompt, result over the view) on http://127.0.0.1:8080/; run `make serve` first; DEMO_ARGS='--api URL --port N'
	$(NO_DEPLOYMENT)
	node $(SDK)/demo/serve.mjs $(DEMO_ARGS)

sdk-test: sdk $(STAMP_PY) ## the SDK's tests: the shared client scenarios, its own cases, and against the real server
	$(NO_DEPLOYMENT)
	node --test $(SDK)/dist-test/*.test.js

lint: $(STAMP_PY) ## ruff, mypy, import-linter (the layers), hadolint, shellcheck
	$(NO_DEPLOYMENT)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/hadolint ci_build/Dockerfile
	$(VENV)/bin/shellcheck --external-sources ci_build/*.sh .ci/run

fmt: $(STAMP_PY) ## fix what ruff can (imports, format)
	$(NO_DEPLOYMENT)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

.PHONY: cost
cost: $(STAMP_PY) ## idle cost per hour and per 30 days of DEPLOYMENT (default dev): as configured, and with each setting that moves it (minReplicas, natGateways, Spot)
	$(PY) -m plan.costs $(CDK_ARGS)

# Stack names from plan.deployments, whose functions composition names the stacks with:
# $(call stacks_of,--build-stacks|--workstation-stacks|--stacks). Lowercase names: make exports a
# variable that also comes from the environment, and CodeBuild sets STACKS for the pull-request diff.
# make stops where it refuses (a config error; a deployment the deploy pipeline deploys, for diff
# and deploy): its lines say why.
stacks_of = $(shell $(PY) -m plan.deployments $(1) $(CDK_ARGS))$(if $(filter-out 0,$(.SHELLSTATUS)),$(error make $@: no stacks for DEPLOYMENT=$(DEPLOYMENT) (the lines above say why)))
build_stacks = $(call stacks_of,--build-stacks)
deployment_stacks = $(call stacks_of,--workstation-stacks)

# A diff or deploy talks to your account: refuse the example account with one line saying so.
REQUIRE_ACCOUNT = $(PY) -m preflight --require-account

diff: deps ## cdk diff of the build infrastructure and DEPLOYMENT (needs AWS credentials); CONTEXT='-c key=value ...'
	$(REQUIRE_ACCOUNT) diff $(CDK_ARGS)
	$(CDK) diff $(build_stacks) $(deployment_stacks) $(CDK_ARGS)

preflight: $(STAMP_PY) ## read-only checks of the AWS account before a deploy (needs AWS credentials); CONTEXT='-c key=value ...'
	$(PY) -m preflight $(CDK_ARGS)

# --import-existing-resources: the image repository and the model bucket are retained with fixed
# names; after a `cdk destroy` the next deploy adopts them (CloudFormation auto-import) instead of
# failing on "already exists".
deploy-build: deps ## deploy the shared build infrastructure: registry and image pipeline (once per account and Region)
	$(REQUIRE_ACCOUNT) deploy $(CDK_ARGS)
	$(CDK) deploy $(build_stacks) --import-existing-resources --require-approval broadening $(CDK_ARGS)

deploy-pipeline: deps ## deploy the self-mutating deploy pipeline (once; then it updates itself)
	$(REQUIRE_ACCOUNT) deploy $(CDK_ARGS)
	$(CDK) deploy EdgeDiffusion-DeployPipeline --require-approval broadening $(CDK_ARGS)

deploy: deploy-build ## deploy the build infrastructure and DEPLOYMENT (default dev) from this workstation
	$(CDK) deploy $(deployment_stacks) --require-approval broadening $(CDK_ARGS)

# The deployment's stacks, by the names the CLI knows them under on the path that deploys them
# (a pipeline deployment's sit inside the deploy pipeline's stage); the CLI deletes dependents first.
# Deleting stacks: rules that protect what a deploy creates (HTTPS required) do not block removing
# a deployment made before them (plan.deployments.TEARDOWN_KEY).
destroy: override CONTEXT += -c teardown=true
destroy: deps ## delete DEPLOYMENT's stacks (asks first); the README's teardown table lists what is kept
	$(REQUIRE_ACCOUNT) destroy $(CDK_ARGS)
	$(CDK) destroy $(call stacks_of,--stacks) $(CDK_ARGS)

serve: $(STAMP_PY) ## run the inference server with the tiny model on localhost (demo: UI on, no token auth, batches of up to 8)
	$(NO_DEPLOYMENT)
	EDGE_DIFFUSION_AUTH=none EDGE_DIFFUSION_UI=1 $(PY) -m runtime.server --model tiny --host 127.0.0.1 --max-batch 8 --docs

BENCH_ARGS ?=
bench: $(STAMP_PY) ## benchmark batching vs no batching on the tiny model; BENCH_ARGS='--phases --model sd21-random ...' times each phase
	$(NO_DEPLOYMENT)
	$(PY) -m runtime.bench $(BENCH_ARGS)

KIT_ARGS ?=
.PHONY: gpu-kit
gpu-kit: $(STAMP_PY) ## build dist/gpu-kit.tar.gz: the benchmark and its wheels for a CUDA host without internet (docs/benchmarks.md); KIT_ARGS='--exclude gradio,boto3'
	$(NO_DEPLOYMENT)
	$(PY) -m runtime.bench.kit build $(KIT_ARGS)

# The scale-out simulation (scaling/) and the breaking point of a running endpoint
# (runtime/bench/breaking_point.py): docs/scaling.md explains both.
.PHONY: simulate breaking-point
simulate: $(STAMP_PY) ## simulate the autoscaling loop on traffic traces; writes docs/scaling-simulation.md and its PNG
	$(NO_DEPLOYMENT)
	$(PY) -m scaling.simulate --out-dir docs

BREAKING_POINT_ARGS ?= --url http://127.0.0.1:7860 --slo-p90-ms 250 --steps 4 --width 64 --height 64 --step-s 10
breaking-point: $(STAMP_PY) ## step a closed-loop load until p90 passes the SLO; BREAKING_POINT_ARGS='--url ... --slo-p90-ms N'
	$(NO_DEPLOYMENT)
	$(PY) -m runtime.bench.breaking_point $(BREAKING_POINT_ARGS)

# One import of all CRDs together: cdk8s writes one module per API group, so importing the
# CRDs of a group (keda.sh: ScaledObject, TriggerAuthentication, ...) one file at a time
# would leave only the last kind in the module.
# The inputs are checked and the modules generated in a temporary directory first:
# charts/imports/ is replaced only once cdk8s import has succeeded.
CRD_ORIGINS := karpenter keda volcano
imports: $(STAMP_NODE) ## regenerate charts/imports/ from the CRDs in third_party/{karpenter,keda,volcano}/crds
	$(NO_DEPLOYMENT)
	for origin in $(CRD_ORIGINS); do \
	  compgen -G "$(CRDS)/$$origin/crds/*.yaml" >/dev/null \
	    || { echo "imports: no CRDs in $(CRDS)/$$origin/crds/; charts/imports/ left unchanged" >&2; exit 1; }; \
	done
	tmp=$$(mktemp -d charts/.imports.XXXXXX); trap 'rm -rf "$$tmp"' EXIT; \
	for crd in $(foreach origin,$(CRD_ORIGINS),$(CRDS)/$(origin)/crds/*.yaml); do \
	  sed '/^---$$/d' "$$crd"; echo '---'; done > "$$tmp/crds.yaml"; \
	$(CDK8S) import --no-check-upgrade "$$tmp/crds.yaml" --language python --output "$$tmp/imports"; \
	compgen -G "$$tmp/imports/*/*" >/dev/null \
	  || { echo "imports: cdk8s import wrote no modules; charts/imports/ left unchanged" >&2; exit 1; }; \
	if [ -e charts/imports ]; then mv charts/imports "$$tmp/previous"; fi; \
	mv "$$tmp/imports" charts/imports

clean: ## remove generated output (keeps .venv and node_modules)
	$(NO_DEPLOYMENT)
	rm -rf cdk.out dist $(SDK)/dist $(SDK)/dist-test $(SDK)/demo/dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -not -path './.venv/*' -not -path './node_modules/*' -prune -exec rm -rf {} +
