"""GPU training throughput: fizzbot's loop against the Hugging Face `Trainer` recipe, in one run.

    python benchmarks/gpu_train.py [--variants baseline,qlora,lora,...] [--steps 20] [--json out.json]

The workload of docs/ANCHORS.md: a Qwen2.5-0.5B-shaped model (24 layers, hidden 896, vocabulary
151,936) with random weights (speed does not depend on weight values), chat windows whose lengths are
log-normal around 300 tokens (48 to 1024) with the loss on the last 8-48 tokens, LoRA r=16 on every
linear layer. Tokens are real (non-padding) tokens; MFU counts 6N FLOPs a token (N = the matmul
parameters, the output head included) against a bf16 matrix product measured on the same card.

Variants (each a fresh model):
  baseline        transformers Trainer + peft, QLoRA nf4, gradient checkpointing, batch 8 padded
                  to its longest row, full-vocabulary logits (the usual QLoRA recipe)
  qlora           fizzbot: QLoRA, bucketed token-budget batches, target-only chunked loss, no checkpointing
  qlora_gc        the same with gradient checkpointing (what checkpointing costs)
  qlora_pad8      fizzbot loop, QLoRA, batch 8 in data order (padding), full logits: the loop alone
  lora            fizzbot: LoRA on bf16 weights, bucketed token-budget batches, target-only loss
  lora_compile    the same under torch.compile
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

DEVICE = "cuda"  # a dry run of the script's logic on CPU sets "cpu" (and a small SHAPE)
SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
             num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096)


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _peak_memory_gb() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else 0.0


def peak_bf16() -> float:
    if DEVICE != "cuda":
        return 1e12
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 20 * 2 * 8192**3 / (time.perf_counter() - start)


def matmul_params() -> int:
    d, f, layers, vocab = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["num_hidden_layers"], SHAPE["vocab_size"]
    kv = SHAPE["num_key_value_heads"] * (d // SHAPE["num_attention_heads"])
    return layers * (d * d + 2 * d * kv + d * d + 3 * d * f) + d * vocab


def chat_rows(n: int, seed: int = 0):
    """Token rows as the anchor builds them: (ids, n_context)."""
    from fizzbot.train.data import TokenizedRows

    rng = random.Random(seed)
    rows, n_ctx = [], []
    for _ in range(n):
        length = int(min(1024, max(48, rng.lognormvariate(math.log(300), 0.6))))
        target = min(length - 1, rng.randint(8, 48))
        rows.append(np.array([rng.randrange(100, SHAPE["vocab_size"] - 100) for _ in range(length)], dtype=np.int32))
        n_ctx.append(length - target)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    return TokenizedRows(np.concatenate(rows), offsets, np.array(n_ctx, np.int32))


def save_model(folder: Path) -> None:
    from transformers import AutoModelForCausalLM, Qwen2Config

    if (folder / "config.json").exists():
        return
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**SHAPE), dtype=torch.bfloat16)
    model.save_pretrained(folder)


class _VocabOnly:
    """What prepare_model needs of a tokenizer when the vocabulary is the model's own."""

    pad_token_id = 0

    def __len__(self) -> int:
        return SHAPE["vocab_size"]


def fizzbot_run(name: str, folder: Path, method: str, *, checkpointing: bool, bucketing: bool, max_tokens: int | None,
                batch_size: int, chunked: bool, compile: bool, steps: int, warm: int, peak: float) -> dict:
    from fizzbot.config import load_config
    from fizzbot.model.build import prepare_model
    from fizzbot.train.data import BatchPlan, collate, plan_epoch
    from fizzbot.train.loop import TorchStepper, setup_optimizer
    from fizzbot.train.objective import TargetOnlyLM

    cfg = load_config(None, [
        f"model.method={method}", "model.dtype=bfloat16", "model.lora_r=16", "model.lora_alpha=32",
        f"training.batch_size={batch_size}", f"training.compile={str(compile).lower()}", "training.use_gpu=true",
        f"training.max_steps={steps + warm}", "training.learning_rate=2e-4", "training.warmup_steps=0",
    ])
    device = torch.device(DEVICE)
    chat_ids = list(range(SHAPE["vocab_size"] - 80, SHAPE["vocab_size"] - 15))  # 64 speaker tokens and <EOT>
    model = prepare_model(cfg.model, str(folder), _VocabOnly(), device, {}, chat_ids, gradient_checkpointing=checkpointing)
    optimizer, scheduler = setup_optimizer(cfg, model, device)
    stepper = TorchStepper(cfg, TargetOnlyLM(model, chunked=chunked), model, optimizer, scheduler, False, device)
    rows = chat_rows(4096)
    plan = BatchPlan(batch_size, max_tokens, 16, bucketing, 0)
    batches = plan_epoch(rows.lengths(), plan, 0)
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    real = padded = 0
    for step in range(warm + steps):
        if step == warm:
            _sync()
            start = time.perf_counter()
            real = padded = 0
        b = collate(rows, batches[step % len(batches)], 0, multiple_of=64 if compile else 1)
        scale = 1.0 / b.target_tokens
        stepper.backward(b, device, scale, last=True)
        stepper.step()
        real += b.real_tokens
        padded += b.padded_tokens
    _sync()
    seconds = time.perf_counter() - start
    result = _figures(real, padded, seconds, peak)
    print(name, result, flush=True)
    del stepper, model, optimizer
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return result


def _figures(real: int, padded: int, seconds: float, peak: float) -> dict:
    tps = real / seconds
    return {
        "tokens_per_s": round(tps),
        "padding_share": round(1 - real / padded, 3),
        "mfu_6N": round(6 * matmul_params() * tps / peak, 4),
        "peak_mem_gb": _peak_memory_gb(),
    }


def baseline_run(folder: Path, steps: int, warm: int, peak: float) -> dict:
    """The usual QLoRA recipe: transformers Trainer, peft, checkpointing, padded batches of 8."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Trainer, TrainerCallback, TrainingArguments

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map={"": 0},
                                                 attn_implementation="sdpa", quantization_config=quant)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"))
    rows = chat_rows(8 * (steps + warm), seed=1)
    data = [{"input_ids": rows.row(i).tolist(), "n": int(rows.n_context[i])} for i in range(len(rows))]
    counted: list[tuple[int, int]] = []
    times: list[float] = []

    def collate_fn(batch):
        longest = max(len(r["input_ids"]) for r in batch)
        ids = torch.zeros(len(batch), longest, dtype=torch.long)
        labels = torch.full((len(batch), longest), -100, dtype=torch.long)
        mask = torch.zeros(len(batch), longest, dtype=torch.long)
        for i, r in enumerate(batch):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, r["n"]:n] = ids[i, r["n"]:n]
            mask[i, :n] = 1
        counted.append((int(mask.sum()), len(batch) * longest))
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            times.append(time.perf_counter())

    args = TrainingArguments(output_dir="/tmp/fizzbot-baseline", per_device_train_batch_size=8, max_steps=steps + warm,
                             logging_steps=10_000, save_strategy="no", report_to="none", bf16=True, gradient_checkpointing=True,
                             learning_rate=2e-4, dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)
    torch.cuda.reset_peak_memory_stats()
    Trainer(model=model, args=args, train_dataset=data, data_collator=collate_fn, callbacks=[Clock()]).train()
    seconds = times[-1] - times[warm - 1]
    real = sum(c[0] for c in counted[warm:steps + warm])
    padded = sum(c[1] for c in counted[warm:steps + warm])
    result = _figures(real, padded, seconds, peak)
    print("baseline", result, flush=True)
    del model
    torch.cuda.empty_cache()
    return result


VARIANTS = {
    "qlora": dict(method="qlora", checkpointing=False, bucketing=True, max_tokens=16384, batch_size=128, chunked=True, compile=False),
    "qlora_32k": dict(method="qlora", checkpointing=False, bucketing=True, max_tokens=32768, batch_size=256, chunked=True, compile=False),
    "qlora_gc": dict(method="qlora", checkpointing=True, bucketing=True, max_tokens=32768, batch_size=256, chunked=True, compile=False),
    "qlora_pad8": dict(method="qlora", checkpointing=False, bucketing=False, max_tokens=None, batch_size=8, chunked=False, compile=False),
    "qlora_pad8_chunked": dict(method="qlora", checkpointing=False, bucketing=False, max_tokens=None, batch_size=8, chunked=True, compile=False),
    "lora": dict(method="lora", checkpointing=False, bucketing=True, max_tokens=32768, batch_size=256, chunked=True, compile=False),
    "lora_compile": dict(method="lora", checkpointing=False, bucketing=True, max_tokens=32768, batch_size=256, chunked=True, compile=True),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="baseline,qlora_pad8,qlora_pad8_chunked,qlora,qlora_32k,qlora_gc,lora,lora_compile")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warm", type=int, default=5)
    parser.add_argument("--json", default=os.path.join(os.environ.get("OUT", "/tmp"), "gpu_train.json"))
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = True
    folder = Path("/tmp/fizzbot-qwen05-random")
    save_model(folder)
    peak = peak_bf16()
    results = {"device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu", "peak_bf16_tflops": round(peak / 1e12), "torch": torch.__version__}
    print(results, flush=True)
    for name in args.variants.split(","):
        try:
            if name == "baseline":
                results[name] = baseline_run(folder, args.steps, args.warm, peak)
            else:
                results[name] = fizzbot_run(name, folder, steps=args.steps, warm=args.warm, peak=peak, **VARIANTS[name])
        except Exception as exc:  # one variant failing must not lose the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            print(name, results[name], flush=True)
            torch.cuda.empty_cache()
        Path(args.json).write_text(json.dumps(results, indent=2))
    base = results.get("baseline", {}).get("tokens_per_s")
    print(f"\n{'variant':22} {'tokens/s':>10} {'x baseline':>10} {'padding':>8} {'MFU(6N)':>8} {'peak GB':>8}")
    for name, r in results.items():
        if isinstance(r, dict) and "tokens_per_s" in r:
            ratio = f"{r['tokens_per_s'] / base:.2f}" if base else "-"
            print(f"{name:22} {r['tokens_per_s']:>10,} {ratio:>10} {r['padding_share']:>8.1%} {r['mfu_6N']:>8.1%} {r['peak_mem_gb']:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
