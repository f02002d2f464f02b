#!/usr/bin/env bash
# The GPU path end to end, through the real commands: prepare -> Ray Train (1 GPU worker, QLoRA) ->
# generate with the CUDA-graph engine -> DeepSpeed ZeRO-2 on the same worker; then a Llama-shaped
# base whose tokenizer fills its vocabulary (as Llama 3's does), so that the chat tokens make the
# matrix grow and GPU training pads it to a multiple of 64: its QLoRA checkpoint must load for
# `generate --latest`; and the fused + packed path (training.fused_kernels, training.packing, flex
# attention) through the same command. Models have random weights and the demo corpus's BPE as
# their tokenizer (no hub is reachable from the GPU machine).
#
#   bash benchmarks/gpu_smoke.sh            (on a GPU machine, from the repo root)
#   PARTS="llama fused" bash benchmarks/gpu_smoke.sh   (some parts only: qwen deepspeed llama fused)
set -euo pipefail
PARTS=${PARTS:-qwen deepspeed llama fused}
has() { [[ " $PARTS " == *" $1 "* ]]; }
W=${W:-/tmp/fizzbot-gpu-smoke}
rm -rf "$W" && mkdir -p "$W"
fb() { python3 -m fizzbot.cli "$@"; }
fb demo-data --output "$W/corpus"
fb prepare --no-ray --input "$W/corpus" --output "$W/prepared"
python3 - "$W" <<'PY'
import json, sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config
from fizzbot.model.tokenizer import train_tiny_tokenizer
w = Path(sys.argv[1])
texts = [json.loads(l)["target"].split(" ", 1)[-1] for l in open(w / "prepared" / "train.jsonl")]
tok = train_tiny_tokenizer(texts, 2048)
cfg = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096)
AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(w / "qwen")
tok.save_pretrained(w / "qwen")
# Llama-shaped: the vocabulary is exactly the tokenizer's (2,048 + what the family's class adds), untied head.
tok.save_pretrained(w / "llama")
rows = len(AutoTokenizer.from_pretrained(w / "llama"))
cfg = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=rows, tie_word_embeddings=False, max_position_embeddings=4096)
AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(w / "llama")
print(f"llama-shaped base: {rows} rows for {rows} tokens")
PY
common=(data.path="$W/prepared" run.dir="$W/runs" training.eval_steps=20 training.save_steps=20
        training.log_steps=10 training.max_tokens_per_batch=16384 training.eval_max_batches=10)
if has qwen; then
  time fb train --config configs/train_gpu_qlora.yaml "${common[@]}" model.base="$W/qwen" run.name=qlora training.max_steps=40
  time fb generate --latest run.dir="$W/runs" --speaker pixelpaws --content "hey everyone" --turns 3 --seed 0 generate.compile=true
fi
if has deepspeed; then
  time fb train --config configs/train_gpu_deepspeed.yaml "${common[@]}" model.base="$W/qwen" run.name=zero2 training.num_workers=1 training.max_steps=20
fi
# The issue's failure: QLoRA on a base whose tokenizer fills its vocabulary, then generate --latest.
if has llama; then
  time fb train --config configs/train_gpu_qlora.yaml "${common[@]}" model.base="$W/llama" run.dir="$W/runs-llama" run.name=llama \
    training.max_steps=4 training.save_steps=4 training.eval_steps=4
  python3 -c "import json,glob; m=json.load(open(glob.glob('$W/runs-llama/llama/*/checkpoint-4/fizzbot_checkpoint.json')[0])); print('embedding rows', m['embedding_rows'])"
  time fb generate --latest run.dir="$W/runs-llama" --speaker pixelpaws --content "hey everyone" --turns 2 --seed 0
fi
# Fused kernels and packed sequences with flex attention, through the real command.
if has fused; then
  time fb train --config configs/train_gpu_qlora.yaml "${common[@]}" model.base="$W/qwen" run.name=fused_packed training.max_steps=40 \
    training.fused_kernels=true training.packing=true training.pack_length=4096 model.attn_implementation=flex_attention
fi
ls "$W"/runs*/*/*/
