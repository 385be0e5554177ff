# Portico: the two commands are `make lab` (bring the lab up and show it) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install lab lab-down test unit lint bench-lab controlplane

install:            ## Debian packages, .venv, the pinned control plane (idempotent)
	bash hack/install.sh

controlplane:       ## build the pinned etcd, kube-apiserver, kube-controller-manager, kubectl, helm
	bash hack/build-controlplane.sh

lab: install        ## bring a lab up in the foreground (Ctrl-C tears it down)
	$(VENV)/bin/portico-lab up

lab-down:           ## tear down every lab, also ones whose owner crashed
	$(VENV)/bin/portico-lab down --all

test: install       ## lint, types, unit tests and lab tests (needs root; lab tests fail, never skip, without it)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy common lab operator/portico_operator nodeagent/portico_nodeagent lbnode/portico_lbnode kubectl/portico_kubectl
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/hadolint images/Dockerfile
	$(PY) -m pytest -v

unit:               ## the fast tests of pure logic only
	$(PY) -m pytest tests/unit -q

lint:               ## ruff, mypy, the layering contracts (pyproject.toml [tool.importlinter]), hadolint
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy common lab operator/portico_operator nodeagent/portico_nodeagent lbnode/portico_lbnode kubectl/portico_kubectl
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/hadolint images/Dockerfile

bench-lab: install  ## lab start time and control-plane memory for 3 and 20 nodes
	$(PY) bench/lab_start.py
