#!/usr/bin/env bash
# The GPU path end to end, through the real commands: prepare -> Ray Train (1 GPU worker, QLoRA) ->
# generate with the CUDA-graph engine -> DeepSpeed ZeRO-2 on the same worker. The model is a
# Qwen2.5-0.5B-shaped network with random weights and the demo corpus's BPE as its tokenizer (no
# hub is reachable from the GPU machine).
#
#   bash benchmarks/gpu_smoke.sh            (on a GPU machine, from the repo root)
set -euo pipefail
W=${W:-/tmp/fizzbot-gpu-smoke}
rm -rf "$W" && mkdir -p "$W"
fb() { python3 -m fizzbot.cli "$@"; }
fb demo-data --output "$W/corpus"
fb prepare --no-ray --input "$W/corpus" --output "$W/prepared"
python3 - "$W" <<'PY'
import json, sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, Qwen2Config
from fizzbot.model.tokenizer import train_tiny_tokenizer
w = Path(sys.argv[1])
texts = [json.loads(l)["target"].split(" ", 1)[-1] for l in open(w / "prepared" / "train.jsonl")]
tok = train_tiny_tokenizer(texts, 2048)
cfg = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096)
AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(w / "qwen")
tok.save_pretrained(w / "qwen")
PY
common=(data.path="$W/prepared" model.base="$W/qwen" run.dir="$W/runs" training.eval_steps=20 training.save_steps=20
        training.log_steps=10 training.max_tokens_per_batch=16384 training.eval_max_batches=10)
time fb train --config configs/train_gpu_qlora.yaml "${common[@]}" run.name=qlora training.max_steps=40
time fb generate --latest run.dir="$W/runs" --speaker pixelpaws --content "hey everyone" --turns 3 --seed 0 generate.compile=true
time fb train --config configs/train_gpu_deepspeed.yaml "${common[@]}" run.name=zero2 training.num_workers=1 training.max_steps=20
ls "$W"/runs/*/*/
