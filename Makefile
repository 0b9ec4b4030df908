# Two entry points on a fresh machine: `make demo` (the whole pipeline on the shipped demo
# teacher, CPU) and `make test` (the test suite). Both install what they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: install test test-fast demo demo-pipeline contract image-test bench clean docs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulled in by a dependency brings gigabytes of CUDA wheels.
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# The edit loop: every test not marked slow (multi-process, long runs); `make test` runs them all.
test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

# docs/cli.md is generated from the stage configs (a test keeps it equal to the code).
docs: install
	$(PY) -m distill.options > docs/cli.md

# The whole pipeline on the shipped demo teacher (CPU, minutes): plain CLI calls in scripts/demo.sh,
# everything under runs/demo/, the eval table printed at the end (docs/demo.md).
demo: install
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

# Two scheduled runs of the shipped pipeline spec (data/demo/pipeline.yaml): the second run answers
# only the new seeds, continues from the first run's champion and is gated against it (docs/pipeline.md).
demo-pipeline: install
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo_pipeline.sh

# Contract tests: vLLM's real output and OpenAI-server types, on CPU, in their own venv so the main
# one stays light. torch first (the local CPU wheel satisfies vllm's pin); then vllm; then drop
# the CUDA builds of torchvision/torchaudio/torchcodec it pulls in, which break `import vllm` on CPU.
CONTRACT_VENV ?= .venv-contract
CPY := $(CONTRACT_VENV)/bin/python
VLLM_VERSION ?= 0.32.0

$(CONTRACT_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(CONTRACT_VENV)
	$(CPY) -m pip install -q --upgrade pip
	$(CPY) -m pip install -q torch==$(TORCH_VERSION)
	$(CPY) -m pip install -q vllm==$(VLLM_VERSION)
	$(CPY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(CPY) -m pip install -q --no-deps -e .
	$(CPY) -m pip install -q pytest pytest-timeout
	touch $@

contract: $(CONTRACT_VENV)/.installed
	$(CPY) -m pytest -q -m contract tests/contract; rc=$$?; if [ $$rc -eq 5 ]; then echo "no contract tests collected"; exit 1; fi; exit $$rc

# The container image for real: a Docker daemon (installed and started when missing), a Debian base
# image made locally, `docker build --target cpu -t distill:cpu`, hadolint, then tests/image against
# the image: --version, the demo, the SageMaker contract, docker stop in train and generate.
image-test: install
	PYTHON=$(PY) bash scripts/image_test.sh

clean:
	rm -rf $(VENV) $(CONTRACT_VENV) build dist *.egg-info
