"""GPU training throughput: the Hugging Face `Trainer` recipe, fizzbot's current path and its fused and
packed variants, measured in one run on one model shape.

    python benchmarks/gpu_train.py --shape qwen0.5b --variants baseline,qlora,qlora_fused,... [--steps 12] [--warm 3]
    python benchmarks/gpu_train.py --device cpu --tiny            (every variant's code path, on CPU, in seconds)

The workload of docs/ANCHORS.md: a model of the chosen shape with random weights (speed does not
depend on weight values), chat windows whose lengths are log-normal around 300 tokens (48 to 1024)
with the loss on the last 8-48 tokens, LoRA r=16 on every linear layer. Tokens are real (non-padding)
tokens; MFU counts 6N FLOPs a token (N = the matmul parameters, the output head included) against a
bf16 matrix product measured on the same card. Each variant runs in a fresh process (Liger patches
transformers' modules globally; peak memory is per variant), prints a progress line per few steps,
and the whole result is written to $OUT/gpu_train_<shape>.json after every variant.

Shapes (random weights): qwen0.5b (24 layers, hidden 896, vocabulary 151,936, tied), qwen1.5b (28 x
1536, tied), llama8b (32 x 4096, GQA 8, vocabulary 128,256, separate head).

Variants:
  baseline          transformers Trainer + peft, QLoRA nf4, gradient checkpointing, batch 8 padded to its
                    longest row, full-vocabulary logits (the usual QLoRA recipe); `baseline_lora`: bf16 LoRA
  qlora, lora       fizzbot's current path: bucketed batches of 32k tokens, target-only chunked loss
  <method>_<tags>   the same with tags, in any order:
                      fused   Liger RMSNorm, RoPE, SwiGLU and fused linear + cross-entropy (training.fused_kernels)
                      packed  rows packed into sequences (training.packing; sdpa, 1,024-token sequences)
                      flex    with packed: flex attention over 4,096-token sequences (blocks between rows skipped)
                      gc      gradient checkpointing
                      16k/8k/64k  tokens per micro-batch (default 32k)
                      pad8    batch 8 in data order, full logits (the loop alone)
                    e.g. qlora_fused_packed_flex, lora_fused, qlora_gc_16k
Each fizzbot variant also computes a probe: the loss and gradient norm of one fixed set of rows before
any step, from the same initial weights, so that the fused and packed paths can be checked against
the plain one (`probe_loss` should agree to bf16 noise).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's fizzbot, also when run as a script

SHAPES = {
    "qwen0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768),
    "qwen1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                     num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768),
    "llama8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, max_position_embeddings=32768,
                    rope_theta=500000.0),
    # --tiny: the same code paths on CPU in seconds
    "tiny": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False, max_position_embeddings=2048),
}
TOKENS = {"8k": 8192, "16k": 16384, "32k": 32768, "64k": 65536}
TAGS = {"fused", "packed", "flex", "gc", "pad8", *TOKENS}


# --- the workload ------------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_memory_gb(device: str) -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else 0.0


def peak_bf16(device: str) -> float:
    """FLOP/s of a bf16 8192^3 matrix product on this card (the MFU denominator)."""
    if device != "cuda":
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
    flops = 20 * 2 * 8192**3 / (time.perf_counter() - start)
    del a, b
    torch.cuda.empty_cache()
    return flops


def matmul_params(shape: dict) -> int:
    d, f, layers, vocab = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"], shape["vocab_size"]
    kv = shape["num_key_value_heads"] * (d // shape["num_attention_heads"])
    return layers * (d * d + 2 * d * kv + d * d + 3 * d * f) + d * vocab


def chat_rows(n: int, vocab: int, seed: int = 0, scale: float = 1.0):
    """Token rows as the anchor builds them: (ids, n_context); `scale` shrinks them for --tiny."""
    from fizzbot.train.data import TokenizedRows

    rng = random.Random(seed)
    rows, n_ctx = [], []
    for _ in range(n):
        length = int(min(1024 * scale, max(48 * scale, rng.lognormvariate(math.log(300 * scale), 0.6))))
        target = min(length - 1, max(2, int(rng.randint(8, 48) * scale)))
        rows.append(np.array([rng.randrange(10, vocab - 100) for _ in range(length)], dtype=np.int32))
        n_ctx.append(length - target)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    return TokenizedRows(np.concatenate(rows), offsets, np.array(n_ctx, np.int32))


def save_model(shape_name: str, device: str) -> Path:
    """The shape with random bf16 weights, saved once per machine (built on the GPU: an 8B model in seconds)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(os.environ.get("FIZZBOT_BENCH_DIR", "/tmp")) / f"fizzbot-bench-{shape_name}"
    if (folder / "config.json").exists():
        return folder
    shape = dict(SHAPES[shape_name])
    config = AutoConfig.for_model(shape.pop("model_type"), **shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model.save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # the variants run in other processes: leave them the whole card
    return folder


class _VocabOnly:
    """What prepare_model needs of a tokenizer when the vocabulary is the model's own."""

    pad_token_id = 0

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __len__(self) -> int:
        return self.vocab


def parse_variant(name: str) -> dict:
    """`qlora_fused_packed_16k` -> the settings of that run (unknown tags are refused)."""
    method, *tags = name.split("_")
    if method not in ("qlora", "lora", "full") or not set(tags) <= TAGS:
        raise SystemExit(f"unknown variant {name!r}: <qlora|lora>[_tag...], tags {sorted(TAGS)}, or baseline / baseline_lora")
    tokens = next((TOKENS[t] for t in tags if t in TOKENS), 32768)
    spec = dict(method=method, tokens=tokens, fused="fused" in tags, packing="packed" in tags, flex="flex" in tags,
                checkpointing="gc" in tags, pad8="pad8" in tags)
    if spec["flex"] and not spec["packing"]:
        raise SystemExit(f"{name}: `flex` goes with `packed`")
    return spec


# --- one fizzbot variant ---------------------------------------------------------------------------------


def fizzbot_run(name: str, folder: Path, shape: dict, *, steps: int, warm: int, peak: float, device: str, tiny: bool) -> dict:
    from fizzbot.config import load_config
    from fizzbot.model.build import prepare_model
    from fizzbot.model.kernels import fused_linear_cross_entropy
    from fizzbot.train.data import BatchPlan, collate, collate_packed, plan_epoch
    from fizzbot.train.loop import TorchStepper, setup_optimizer
    from fizzbot.train.objective import TargetOnlyLM

    spec = parse_variant(name)
    scale = 0.125 if tiny else 1.0
    tokens = int(spec["tokens"] * scale)
    pack_length = int((4096 if spec["flex"] else 1024) * scale)
    attn = "flex_attention" if spec["flex"] else "sdpa"
    if attn == "flex_attention" and device != "cuda":
        attn = "sdpa"  # flex attention compiles its kernel for the GPU; the CPU smoke run checks the packing path
        print(f"{name}: flex attention needs a GPU here; sdpa with the same packed batches", flush=True)
    batch_size = 8 if spec["pad8"] else 512
    overrides = [
        f"model.method={spec['method']}", f"model.dtype={'bfloat16' if device == 'cuda' else 'float32'}", "model.lora_r=16",
        "model.lora_alpha=32", f"model.attn_implementation={attn}", f"training.batch_size={batch_size}",
        f"training.use_gpu={'true' if device == 'cuda' else 'false'}", f"training.max_steps={steps + warm}",
        "training.learning_rate=2e-4", "training.warmup_steps=0", f"training.fused_kernels={str(spec['fused']).lower()}",
        f"training.max_seq_len={int(1024 * scale)}",
    ]
    if spec["packing"]:
        overrides += ["training.packing=true", f"training.max_tokens_per_batch={tokens}", f"training.pack_length={pack_length}"]
    cfg = load_config(None, overrides)
    dev = torch.device(device)
    vocab = shape["vocab_size"]
    chat_ids = list(range(vocab - 80, vocab - 15))  # 64 speaker tokens and <EOT>
    torch.manual_seed(0)  # the same LoRA initialisation in every variant: the probes compare
    model = prepare_model(cfg.model, str(folder), _VocabOnly(vocab), dev, {}, chat_ids, gradient_checkpointing=spec["checkpointing"],
                          fused_kernels=spec["fused"])
    optimizer, scheduler = setup_optimizer(cfg, model, dev)
    fused_loss = fused_linear_cross_entropy(dev) if spec["fused"] else None
    objective = TargetOnlyLM(model, chunked=not spec["pad8"], fused_loss=fused_loss)
    stepper = TorchStepper(cfg, objective, model, optimizer, scheduler, False, dev)
    rows = chat_rows(512 if tiny else 4096, vocab, scale=scale)

    def batch_of(indices):
        if spec["packing"]:
            return collate_packed(rows, indices, 0, pack_length)
        return collate(rows, indices, 0)

    # The probe: the same 32 rows, in this variant's batch format, before any step.
    probe_rows = np.arange(32)
    if spec["packing"]:
        probe_plan = BatchPlan(32, 64 * pack_length, 1, True, 0, pack_length=pack_length)
        probe = batch_of(plan_epoch(rows.lengths()[:32], probe_plan, 0)[0])
    else:
        probe = batch_of(probe_rows)
    loss = stepper.backward(probe, dev, 1.0 / probe.target_tokens, last=True)
    grad_norm = float(torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1e9))
    optimizer.zero_grad(set_to_none=True)
    probe_loss = float(loss) / probe.target_tokens

    plan = BatchPlan(batch_size, None if spec["pad8"] else tokens, 16, not spec["pad8"], 0,
                     pack_length=pack_length if spec["packing"] else None)
    batches = plan_epoch(rows.lengths(), plan, 0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    real = padded = 0
    start = time.perf_counter()
    for step in range(warm + steps):
        if step == warm:
            sync(device)
            start = time.perf_counter()
            real = padded = 0
        b = batch_of(batches[step % len(batches)])
        stepper.backward(b, dev, 1.0 / max(b.target_tokens, 1), last=True)
        stepper.step()
        real += b.real_tokens
        padded += b.padded_tokens
        if (step + 1) % 5 == 0 or step + 1 == warm + steps:
            sync(device)
            print(f"  {name}: step {step + 1}/{warm + steps} ({time.perf_counter() - start:.1f}s)", flush=True)
    sync(device)
    result = figures(real, padded, time.perf_counter() - start, peak, shape, device)
    result.update(probe_loss=round(probe_loss, 5), probe_grad_norm=round(grad_norm, 5), tokens_per_batch=tokens,
                  attention=attn if spec["packing"] else "sdpa (padded)")
    return result


def figures(real: int, padded: int, seconds: float, peak: float, shape: dict, device: str) -> dict:
    tps = real / seconds
    return {
        "tokens_per_s": round(tps),
        "padding_share": round(1 - real / max(padded, 1), 3),
        "mfu_6N": round(6 * matmul_params(shape) * tps / peak, 4),
        "peak_mem_gb": peak_memory_gb(device),
    }


# --- the Trainer recipe ------------------------------------------------------------------------------------


def baseline_run(name: str, folder: Path, shape: dict, *, steps: int, warm: int, peak: float, device: str, tiny: bool) -> dict:
    """The usual recipe: transformers Trainer, peft, checkpointing, padded batches of 8 (QLoRA, or bf16 LoRA)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Trainer, TrainerCallback, TrainingArguments

    quantized = name == "baseline"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kwargs = {"dtype": dtype, "attn_implementation": "sdpa", "device_map": {"": 0 if device == "cuda" else "cpu"}}
    if quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"))
    rows = chat_rows(8 * (steps + warm), shape["vocab_size"], seed=1, scale=0.125 if tiny else 1.0)
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
            sync(device)
            times.append(time.perf_counter())
            if state.global_step % 5 == 0:
                print(f"  {name}: step {state.global_step}/{steps + warm}", flush=True)

    args = TrainingArguments(output_dir="/tmp/fizzbot-baseline", per_device_train_batch_size=8, max_steps=steps + warm,
                             logging_steps=10_000, save_strategy="no", report_to="none", bf16=device == "cuda",
                             gradient_checkpointing=True, learning_rate=2e-4, dataloader_num_workers=0,
                             remove_unused_columns=False, disable_tqdm=True, use_cpu=device != "cuda")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    Trainer(model=model, args=args, train_dataset=data, data_collator=collate_fn, callbacks=[Clock()]).train()
    seconds = times[-1] - times[warm - 1]
    real = sum(c[0] for c in counted[warm:steps + warm])
    padded = sum(c[1] for c in counted[warm:steps + warm])
    return figures(real, padded, seconds, peak, shape, device)


# --- the driver: one process per variant ----------------------------------------------------------------------


def run_one(args) -> int:
    shape = SHAPES[args.shape]
    folder = Path(args.model_dir)
    runner = baseline_run if args.one.startswith("baseline") else fizzbot_run
    result = runner(args.one, folder, shape, steps=args.steps, warm=args.warm, peak=args.peak, device=args.device, tiny=args.tiny)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--shape", default="qwen0.5b", choices=[s for s in SHAPES if s != "tiny"])
    parser.add_argument("--variants", default="baseline,qlora,qlora_fused,qlora_packed,qlora_fused_packed,lora,lora_fused,lora_fused_packed")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--warm", type=int, default=3, help="untimed steps first (allocator, compilation)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="a tiny model and rows: a smoke run of every code path")
    parser.add_argument("--json", default=None, help="default: $OUT/gpu_train_<shape>.json (or /tmp)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a variant may take before it is stopped")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--peak", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.shape = "tiny"
        args.steps, args.warm = min(args.steps, 3), min(args.warm, 1)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --tiny for a smoke run of the code paths")
    torch.backends.cuda.matmul.allow_tf32 = True
    if args.one:
        return run_one(args)

    variants = args.variants.split(",")
    for name in variants:
        if not name.startswith("baseline"):
            parse_variant(name)  # refuse a typo before minutes of work
    started = time.perf_counter()
    folder = save_model(args.shape, args.device)
    peak = peak_bf16(args.device)
    out = Path(args.json or os.path.join(os.environ.get("OUT", "/tmp"), f"gpu_train_{args.shape}.json"))
    results: dict = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "shape": args.shape, "matmul_params": matmul_params(SHAPES[args.shape]), "peak_bf16_tflops": round(peak / 1e12),
        "torch": torch.__version__, "steps": args.steps, "warm": args.warm, "variants": {},
    }
    print(f"{results['device']}: {args.shape} ({results['matmul_params'] / 1e9:.2f}B matmul parameters), "
          f"bf16 peak {results['peak_bf16_tflops']} TFLOP/s; model ready in {time.perf_counter() - started:.0f}s", flush=True)
    for name in variants:
        print(f"-- {name}", flush=True)
        command = [sys.executable, __file__, "--one", name, "--model-dir", str(folder), "--peak", str(peak), "--steps", str(args.steps),
                   "--warm", str(args.warm), "--device", args.device] + (["--tiny"] if args.tiny else ["--shape", args.shape])
        begun = time.perf_counter()
        result = run_variant(command, args.timeout)
        result["seconds"] = round(time.perf_counter() - begun, 1)
        results["variants"][name] = result
        print(f"{name}: {result}", flush=True)
        out.write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"\nwritten {out} in {time.perf_counter() - started:.0f}s", flush=True)
    return 0


def run_variant(command: list[str], timeout: float) -> dict:
    """Run one variant's process, echoing its progress lines as they come; its RESULT line, or the error."""
    import tempfile
    import threading

    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, bufsize=1)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        found = None
        for line in proc.stdout:
            if line.startswith("RESULT "):
                found = json.loads(line[len("RESULT "):])
            else:
                print(line.rstrip(), flush=True)
        proc.wait()
        timer.cancel()
        errors.seek(0)
        text = errors.read()
        for line in text.splitlines():
            if line.startswith("[train]"):  # what fizzbot said about its kernels (applied, or why not)
                print("  " + line, flush=True)
        if found is not None:
            return found
        print(text[-3000:], file=sys.stderr, flush=True)
        last = (text.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {last}"[:500] if proc.returncode != -9 else f"stopped after {timeout:.0f}s"}


def print_table(results: dict) -> None:
    rows = results["variants"]
    base = rows.get("baseline", {}).get("tokens_per_s")
    plain = {m: rows.get(m, {}) for m in ("qlora", "lora")}
    print(f"\n{'variant':28} {'tokens/s':>10} {'x baseline':>10} {'x current':>9} {'padding':>8} {'MFU(6N)':>8} {'peak GB':>8} {'probe loss':>11}")
    for name, r in rows.items():
        if "tokens_per_s" not in r:
            print(f"{name:28} {r.get('error', '')[:80]}")
            continue
        current = plain.get(name.split("_")[0], {}).get("tokens_per_s")
        ratio = f"{r['tokens_per_s'] / base:.2f}" if base else "-"
        vs_current = f"{r['tokens_per_s'] / current:.2f}" if current and not name.startswith("baseline") else "-"
        probe = f"{r['probe_loss']:.4f}" if "probe_loss" in r else "-"
        print(f"{name:28} {r['tokens_per_s']:>10,} {ratio:>10} {vs_current:>9} {r['padding_share']:>8.1%} {r['mfu_6N']:>8.1%} "
              f"{r['peak_mem_gb']:>8} {probe:>11}")


if __name__ == "__main__":
    raise SystemExit(main())
