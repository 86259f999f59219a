# resnest_gluon: one-command set-up, demo and tests.
#
#   make demo    build/reuse the environment, then run the main job on built-in data
#   make test    build/reuse the environment, then lint and run the test suite
#
# The virtual environment lives outside the clone, keyed by the pinned requirements, so a
# second run (or a fresh clone on the same machine) spends seconds on set-up. Horovod is
# built from source against MXNet with Gloo (no MPI).

PYTHON     ?= python3.11
MXNET_PKG  ?= mxnet
CACHE_DIR  ?= $(HOME)/.cache/resnest_gluon
REQ_FILES  := requirements/base.txt requirements/dev.txt requirements/constraints.txt Makefile.env
REQ_HASH   := $(shell cat $(REQ_FILES) | sha256sum | cut -c1-12)
VENV       ?= $(CACHE_DIR)/venv-$(MXNET_PKG)-$(REQ_HASH)
VPY        := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-installed
# Installed on top of the environment without dependencies, keyed by its own hash, so that a
# change of a pinned reference reinstalls only that (not Horovod).
PEERS_FILE := requirements/peers.txt
PEERS_STAMP := $(VENV)/.peers-$(shell sha256sum $(PEERS_FILE) | cut -c1-12)
PYTEST_ARGS ?=

include Makefile.env

# A CUDA build of MXNet (MXNET_PKG=mxnet-cu112) gets Horovod with NCCL: the toolkit and NCCL
# are found first (scripts/check_gpu_build.py says what is missing), and --check-build must
# list NCCL. Its environment has its own name, so the CPU one is untouched.
GPU_BUILD  := $(findstring -cu,$(MXNET_PKG))
GPU_CHECK  := $(PYTHON) scripts/check_gpu_build.py --horovod-env --mxnet-pkg $(MXNET_PKG)

.PHONY: all env demo test test-multihost multihost-deps venv-path lint bench clean-env help
all: help

help:
	@echo "make demo   - set up the environment and run the demo (see README)"
	@echo "make test   - set up the environment, lint, and run the tests"
	@echo "make lint   - only the linter (ruff, settings in ruff.toml)"
	@echo "make env    - only set up the environment ($(VENV))"
	@echo "make test-multihost - two hosts on this machine (network namespaces + sshd; root)"

$(DEPS_STAMP):
ifneq ($(GPU_BUILD),)
	@$(GPU_CHECK) >/dev/null
endif
	@echo ">>> creating virtual environment $(VENV)"
	rm -rf $(VENV)
	mkdir -p $(CACHE_DIR)
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade "pip==24.2"
	$(VPY) -m pip install --quiet -c requirements/constraints.txt $(MXNET_PKG) numpy
	$(VPY) -m pip install --quiet -c requirements/constraints.txt -r requirements/dev.txt
	@echo ">>> building horovod from source with MXNet + Gloo $(if $(GPU_BUILD),+ NCCL )(about 5 minutes on 2 cores)"
	PATH=$(VENV)/bin:$$PATH $(HOROVOD_BUILD_ENV) $(if $(GPU_BUILD),$$($(GPU_CHECK))) \
	  $(VPY) -m pip install --quiet --no-build-isolation --no-cache-dir \
	  -c requirements/constraints.txt horovod
	$(VENV)/bin/horovodrun --check-build | tee $(VENV)/horovod-check.txt
	grep -q "\[X\] MXNet" $(VENV)/horovod-check.txt
	grep -q "\[X\] Gloo" $(VENV)/horovod-check.txt
ifneq ($(GPU_BUILD),)
	grep -q "\[X\] NCCL" $(VENV)/horovod-check.txt || { echo "Horovod was built without NCCL:" \
	  "see the pip output above"; exit 1; }
endif
	touch $@

$(PEERS_STAMP): $(DEPS_STAMP) $(PEERS_FILE)
	@echo ">>> installing the reference implementations of $(PEERS_FILE) (without dependencies)"
	$(VPY) -m pip install --quiet --no-deps -r $(PEERS_FILE)
	rm -f $(VENV)/.peers-*
	touch $@

# The package itself is installed editable into the shared environment; re-pointed when the
# environment is used from another clone (scripts/point_env_at_clone.py removes the other
# clones' paths, which pip leaves behind ahead of the new one) and checked; the import check
# (about 2 s: it imports MXNet) runs once where nothing changes.
WHICH_CLONE := cd / && $(VPY) -c "import os, resnest_gluon; print(os.path.dirname(os.path.dirname(resnest_gluon.__file__)))" 2>/dev/null

env: $(DEPS_STAMP) $(PEERS_STAMP)
	@if [ "$$(cat $(VENV)/.source-dir 2>/dev/null)" != "$(CURDIR)" ] \
	    || [ "$$($(WHICH_CLONE))" != "$(CURDIR)" ]; then \
	  echo ">>> installing resnest_gluon (editable) from $(CURDIR)"; \
	  rm -f $(VENV)/.source-dir; \
	  $(VPY) scripts/point_env_at_clone.py $(CURDIR) && \
	  $(VPY) -m pip install --quiet --no-deps --no-build-isolation -e . && \
	  echo "$(CURDIR)" > $(VENV)/.source-dir; \
	  found=$$($(WHICH_CLONE)); if [ "$$found" != "$(CURDIR)" ]; then \
	    echo "error: the environment $(VENV) imports resnest_gluon from '$$found', not $(CURDIR)" >&2; \
	    exit 1; fi; \
	fi
	@$(VPY) -m resnest_gluon.models.extension 2>&1 | tail -2 || true
	@$(VPY) -c "import sys; from resnest_gluon.data.resample import main; sys.exit(main())" \
	  2>&1 | tail -1 || true

demo: env
	PATH=$(VENV)/bin:$$PATH $(VPY) scripts/demo.py --fresh

lint: env
	$(VENV)/bin/ruff check .

test: env lint
	PATH=$(VENV)/bin:$$PATH $(VPY) -m pytest $(PYTEST_ARGS)

# Two hosts made of network namespaces with sshd (tests/multihost/twohosts.py); needs root.
# tests/conftest.py leaves tests/multihost out of `make test` unless RESNEST_MULTIHOST=1.
test-multihost: env multihost-deps
	RESNEST_MULTIHOST=1 PATH=$(VENV)/bin:$$PATH $(VPY) -m pytest tests/multihost $(PYTEST_ARGS)

multihost-deps:
	@if ! command -v /usr/sbin/sshd >/dev/null || ! command -v tc >/dev/null \
	    || ! command -v ssh >/dev/null; then \
	  echo ">>> installing openssh-server, openssh-client and iproute2 (Debian packages)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    openssh-server openssh-client iproute2 >/dev/null; \
	fi

venv-path:
	@echo $(VENV)

clean-env:
	rm -rf $(VENV)
