# fizzbot: every target installs what it needs into .venv first (idempotent, fast when done).
# `make help` lists the targets.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch on this project's machines; a range would let pip fetch a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
IMAGE     ?= fizzbot
CONFIG    ?= configs/demo.yaml
SERVE_CONFIG ?= configs/serve.yaml
RAY_ADDRESS ?= http://127.0.0.1:8265
# docker-* runs: as you, so that what they write into the mounted repo (data/, runs/) is yours.
DOCKER_USER ?= --user "$$(id -u):$$(id -g)"
# -it only from a terminal (docker refuses -t without one, as in CI).
DOCKER_TTY := $(shell [ -t 0 ] && echo -it)

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast gen-training-data local-smoke test-latest serve submit cluster-up cluster-down \
        docker-build docker-build-cpu docker-train-gpu docker-train-cpu docker-smoke docker-smoke-cpu \
        docker-train-gpu-build docker-train-cpu-build docker-smoke-build docker-smoke-cpu-build bench reliability clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-24s %s\n", $$1, $$2}'

$(BIN)/fizzbot: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

install: $(BIN)/fizzbot ## create .venv and install fizzbot with its test tools

demo: install ## the whole stack on the embedded default: corpus -> prepare -> train -> serve -> ask
	$(BIN)/fizzbot demo --config $(CONFIG)

test: install ## run the test suite (what CI runs)
	$(BIN)/pytest -q

test-fast: install ## the tests that need no Ray cluster
	$(BIN)/pytest -q -m "not slow"

gen-training-data: install ## demo corpus -> data/demo-prepared (train/val JSONL, speaker map, stats)
	$(BIN)/fizzbot demo-data --output data/demo-corpus
	$(BIN)/fizzbot prepare --config $(CONFIG)

local-smoke: gen-training-data ## a short training run on the demo data, then one generation
	$(BIN)/fizzbot train --config $(CONFIG) training.max_steps=20 training.eval_steps=10 training.save_steps=20 run.name=smoke
	$(BIN)/fizzbot generate --latest --speaker pixelpaws --content "hey everyone" --turns 3 --seed 0

test-latest: install ## generate from the newest run's best checkpoint
	$(BIN)/fizzbot generate --latest --speaker pixelpaws --content "hey everyone" --turns 4

serve: install ## serve the newest run's best checkpoint on http://127.0.0.1:8000
	$(BIN)/fizzbot serve --config $(SERVE_CONFIG)

submit: install ## submit the pipeline (prepare -> train -> deploy) to the Ray cluster at RAY_ADDRESS
	RAY_ADDRESS=$(RAY_ADDRESS) $(BIN)/ray job submit --working-dir . -- python jobs/pipeline.py --config $(CONFIG)

cluster-up: install ## start the AWS cluster of cluster.yaml (needs AWS credentials; commands in its header)
	@$(BIN)/python -c "import boto3" 2>/dev/null || $(BIN)/pip install -q "boto3>=1.26"
	$(BIN)/ray up -y cluster.yaml

cluster-down: install ## terminate the AWS cluster of cluster.yaml
	@$(BIN)/python -c "import boto3" 2>/dev/null || $(BIN)/pip install -q "boto3>=1.26"
	$(BIN)/ray down -y cluster.yaml

bench: install ## CPU benchmarks (figures in docs/BENCHMARKS.md)
	$(BIN)/python benchmarks/prepare_throughput.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/serve_throughput.py

reliability: install ## the full load test (10,000 requests) and the fault, fuzz and documented-command tests; figures into docs/reliability/ (docs/RELIABILITY.md)
	$(BIN)/python benchmarks/load_test.py --requests 10000 --json docs/reliability/load.json
	FIZZBOT_FUZZ_EXAMPLES=300 FIZZBOT_LOAD_REQUESTS=3000 FIZZBOT_RELIABILITY_OUT=docs/reliability $(BIN)/pytest -q -s \
	  tests/test_reliability_api.py tests/test_faults.py tests/test_load.py tests/test_documented_commands.py

docker-build: ## build the GPU image (CUDA base)
	docker build -t $(IMAGE):gpu -f Dockerfile --build-arg VARIANT=gpu --build-arg TORCH_PIN="$(TORCH_PIN)" .

docker-build-cpu: ## build the CPU image
	docker build -t $(IMAGE):cpu -f Dockerfile --build-arg VARIANT=cpu --build-arg TORCH_PIN="$(TORCH_PIN)" .

docker-train-gpu: ## QLoRA training in the GPU image (the repo mounted at /workspace)
	docker run --rm $(DOCKER_TTY) $(DOCKER_USER) --gpus all --shm-size=8g -v "$$PWD":/workspace -w /workspace $(IMAGE):gpu \
	  fizzbot train --config configs/train_gpu_qlora.yaml

docker-train-cpu: ## CPU training in the CPU image
	docker run --rm $(DOCKER_TTY) $(DOCKER_USER) --shm-size=4g -v "$$PWD":/workspace -w /workspace $(IMAGE):cpu \
	  fizzbot train --config configs/train_cpu.yaml

docker-smoke: ## the demo pipeline in the GPU image
	docker run --rm $(DOCKER_TTY) $(DOCKER_USER) --gpus all --shm-size=8g -v "$$PWD":/workspace -w /workspace $(IMAGE):gpu \
	  fizzbot demo --config configs/demo.yaml

docker-smoke-cpu: ## the demo pipeline in the CPU image
	docker run --rm $(DOCKER_TTY) $(DOCKER_USER) --shm-size=4g -v "$$PWD":/workspace -w /workspace $(IMAGE):cpu \
	  fizzbot demo --config configs/demo.yaml

docker-train-gpu-build: docker-build docker-train-gpu ## build, then train on GPU
docker-train-cpu-build: docker-build-cpu docker-train-cpu ## build, then train on CPU
docker-smoke-build: docker-build docker-smoke ## build, then the GPU smoke run
docker-smoke-cpu-build: docker-build-cpu docker-smoke-cpu ## build, then the CPU smoke run

clean: ## remove generated data, runs and caches (not .venv)
	rm -rf data/demo-corpus data/demo-prepared runs .pytest_cache
