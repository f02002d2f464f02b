#!/usr/bin/env python
"""Training throughput on CPU: fizzbot's loop against Hugging Face `Trainer` + peft, same model, same rows.

    .venv/bin/python benchmarks/train_throughput.py                          # LoRA, 30 measured steps
    .venv/bin/python benchmarks/train_throughput.py --method full --json /tmp/train.json
    .venv/bin/python benchmarks/train_throughput.py --steps 8 --warmup 2     # a quick check

The figure is real tokens per second: non-padding tokens of the batches trained on, divided by the
wall time of the measured optimizer steps (after `--warmup` steps; model building and data loading
are outside the clock on both sides). Goal: fizzbot >= 1.5x the Trainer.

Both sides, in this one process:
  * the demo corpus (fizzbot.data.demo) prepared without Ray, configs/demo.yaml's model shape (hidden
    192, 4 layers, BPE vocab 2048, max_seq_len 320), its tokenizer built by fizzbot's own
    `build_tokenizer` and rows tokenised by `RowTokenizer` (labels -100 on the context);
  * the same model: fizzbot's `build_model` (`create_tiny_base` + `prepare_model`: LoRA r=16 on all
    linear layers with the chat-token rows trainable through peft's `trainable_token_indices`, or
    full fine-tuning with `--method full`), rebuilt from the same seed for every run, fp32;
  * the same rows: (warmup + steps) x batch rows drawn once from the training set; each run is one
    epoch over exactly those rows, 8 rows a batch, one optimizer step per batch;
  * the same optimizer (torch AdamW, betas 0.9/0.95, eps 1e-8, no weight decay), gradient clipping
    at 1.0, the same warmup + cosine schedule, torch.set_num_threads(--threads), no Ray.

fizzbot: the per-step body of fizzbot.train.loop._train: batches from `plan_epoch` (length buckets)
and `collate`, `TargetOnlyLM` (logits at target positions only, in recomputed chunks), TorchStepper
(backward, clip_grad_norm_, AdamW step). Trainer: the usual recipe, `DataCollatorForSeq2Seq`
padding to the longest row of a batch, batches in random order, the model's own full-vocabulary
loss (`model.config.use_cache=False`, as peft recipes set).

Ablations (fizzbot's loop, `--no-ablations` skips them) separate the two techniques:
`batching=pad` (random order, like the Trainer), `chunked_loss=False` (full logits), and both off
(the Trainer's recipe inside fizzbot's loop, i.e. the loop's own overhead against the Trainer's).
`--repeat R` runs every variant R times, interleaved, and reports the median.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass
class RunResult:
    name: str
    steps: int
    seconds: float
    real_tokens: int
    padded_tokens: int
    target_tokens: int
    mean_loss: float  # per target token, over the measured steps
    threads: int
    step_seconds: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.real_tokens / max(self.seconds, 1e-9)

    @property
    def padding_share(self) -> float:
        return 1.0 - self.real_tokens / max(self.padded_tokens, 1)


# --- the shared setup: data, tokenizer, rows, config -------------------------------------------------


@dataclass
class Setup:
    cfg: object
    job: object
    rows: object  # TokenizedRows: exactly the rows of one run
    work: Path


def build_setup(args, work: Path) -> Setup:
    import numpy as np

    from fizzbot.config import load_config
    from fizzbot.data.demo import write_demo_corpus
    from fizzbot.data.pipeline import prepare
    from fizzbot.train.data import RowTokenizer, read_rows
    from fizzbot.train.loop import JobSpec
    from fizzbot.train.trainer import build_tokenizer, resolve_data

    total_steps = args.warmup + args.steps
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"data.inputs=[{work / 'corpus'}]",
        f"data.output={work / 'prepared'}",
        f"data.path={work / 'prepared'}",
        f"model.method={args.method}",
        "model.dtype=float32",
        "training.num_workers=1",
        f"training.threads_per_worker={args.threads}",
        f"training.batch_size={args.batch_size}",
        "training.grad_accum_steps=1",
        f"training.max_steps={total_steps}",
        f"training.warmup_steps={min(args.warmup, total_steps)}",
        f"run.dir={work / 'runs'}",
    ])
    t0 = time.perf_counter()
    write_demo_corpus(work / "corpus", seed=0, days=args.days)
    prepare(cfg.data, use_ray=False, report=False)
    run_dir = work / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    data = resolve_data(cfg, run_dir)
    tokenizer = build_tokenizer(cfg, data, run_dir)
    speaker_ids = tokenizer.convert_tokens_to_ids(data.speaker_map.tokens)
    chat_ids = speaker_ids + [tokenizer.convert_tokens_to_ids("<EOT>")]
    contexts, targets = read_rows(data.train_path)
    all_rows = RowTokenizer(tokenizer, cfg.training.max_seq_len, speaker_ids)(contexts, targets).ordered_by_content()
    wanted = total_steps * args.batch_size
    if wanted > len(all_rows):
        sys.exit(f"{wanted} rows wanted ({total_steps} steps x {args.batch_size}) but the demo data has {len(all_rows)}: raise --days")
    chosen = np.sort(np.random.default_rng(args.seed).choice(len(all_rows), wanted, replace=False))
    rows = all_rows.select(chosen)
    lengths = rows.lengths()
    log(
        f"data ready in {time.perf_counter() - t0:.1f}s: {len(all_rows):,} training rows, {len(rows)} used "
        f"(length mean {lengths.mean():.0f}, median {np.median(lengths):.0f}, max {lengths.max()}; "
        f"target share {1 - rows.n_context.sum() / lengths.sum():.0%}); vocabulary {len(tokenizer)}"
    )
    job = JobSpec(
        run_dir=str(run_dir), metrics_dir=None, base=cfg.model.base, tokenizer=tokenizer,
        speaker_map=data.speaker_map.to_json(), chat_token_ids=chat_ids, speaker_token_ids=speaker_ids,
        config_yaml=cfg.to_yaml(),
    )
    return Setup(cfg, job, rows, work)


def fresh_model(setup: Setup, cfg):
    """The model exactly as a fizzbot worker builds it, from the same seed every time."""
    import torch

    from fizzbot.train.loop import build_model, set_seed

    set_seed(cfg.training.seed)
    folder = Path(tempfile.mkdtemp(prefix="model-", dir=setup.work))
    model, _ = build_model(cfg, setup.job, torch.device("cpu"), folder)
    return model


# --- fizzbot's loop -----------------------------------------------------------------------------------


def run_fizzbot(setup: Setup, args, batching: str, chunked: bool, name: str) -> RunResult:
    import torch

    from fizzbot.config import replace
    from fizzbot.train.data import BatchPlan, collate, plan_epoch
    from fizzbot.train.loop import TorchStepper, setup_optimizer
    from fizzbot.train.objective import TargetOnlyLM

    cfg = replace(setup.cfg, f"training.batching={batching}", f"training.chunked_loss={str(chunked).lower()}")
    t = cfg.training
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    model = fresh_model(setup, cfg)
    optimizer, scheduler = setup_optimizer(cfg, model, device)
    objective = TargetOnlyLM(model, chunked=t.chunked_loss)
    stepper = TorchStepper(cfg, objective, model, optimizer, scheduler, False, device)
    pad_id = setup.job.tokenizer.pad_token_id
    rows = setup.rows
    plan = BatchPlan(t.batch_size, t.max_tokens_per_batch, t.bucket_size_multiplier, t.batching == "bucket", t.seed)
    epoch_batches = plan_epoch(rows.lengths(), plan, 0)
    assert len(epoch_batches) == t.max_steps, (len(epoch_batches), t.max_steps)

    real = padded = targets = 0
    loss_sum = 0.0
    marks: list[float] = []
    start = None
    for step in range(t.max_steps):
        if step == args.warmup:
            start = time.perf_counter()
            marks.append(start)
        # What _train does per step (one worker, one micro-batch per step).
        batches = [collate(rows, epoch_batches[step], pad_id)]
        local_targets = sum(b.target_tokens for b in batches)
        scale = 1.0 / max(local_targets, 1.0)
        step_loss = 0.0
        for i, b in enumerate(batches):
            loss = stepper.backward(b, device, scale, last=i == len(batches) - 1)
            step_loss += float(loss)
        stepper.step()
        if step >= args.warmup:
            marks.append(time.perf_counter())
            real += sum(b.real_tokens for b in batches)
            padded += sum(b.padded_tokens for b in batches)
            targets += local_targets
            loss_sum += step_loss
    seconds = marks[-1] - start
    steps = t.max_steps - args.warmup
    return RunResult(name, steps, seconds, real, padded, targets, loss_sum / max(targets, 1), torch.get_num_threads(),
                     [b - a for a, b in zip(marks, marks[1:])])


# --- Hugging Face Trainer --------------------------------------------------------------------------------


def run_hf_trainer(setup: Setup, args, name: str = "hf_trainer") -> RunResult:
    import torch
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    from fizzbot.train.data import IGNORE_INDEX

    hf_logging.set_verbosity_error()
    cfg = setup.cfg
    t = cfg.training
    torch.set_num_threads(args.threads)
    model = fresh_model(setup, cfg)
    model.config.use_cache = False  # training builds no KV cache (peft recipes set this too)
    rows = setup.rows
    dataset = []
    for i in range(len(rows)):
        ids = rows.row(i).astype("int64").tolist()
        c = int(rows.n_context[i])
        dataset.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE_INDEX] * c + ids[c:]})
    collator = DataCollatorForSeq2Seq(setup.job.tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX, return_tensors="pt")

    counts = {"real": [], "padded": [], "targets": [], "threads": 0}
    marks: list[float] = []

    class CountingTrainer(Trainer):
        """The stock Trainer; it only notes the size of each batch it trains on."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs["attention_mask"]
            counts["real"].append(int(mask.sum()))
            counts["padded"].append(int(mask.numel()))
            counts["targets"].append(int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum()))
            counts["threads"] = torch.get_num_threads()
            return super().training_step(model, inputs, num_items_in_batch)

    class StepClock(TrainerCallback):
        def on_step_end(self, args_, state, control, **kwargs):
            marks.append(time.perf_counter())

    training_args = TrainingArguments(
        output_dir=str(setup.work / "hf-out"),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=1,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-8,
        optim="adamw_torch",  # fizzbot's AdamW on CPU (the default, adamw_torch_fused, is a CUDA kernel)
        max_grad_norm=t.max_grad_norm,
        logging_steps=10**6,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
        train_sampling_strategy="random",  # transformers 5.x: replaces group_by_length=False
        seed=t.seed,
        disable_tqdm=True,
    )
    trainer = CountingTrainer(
        model=model, args=training_args, train_dataset=dataset, data_collator=collator, callbacks=[StepClock()]
    )
    trainer.remove_callback(PrinterCallback)  # keep stdout for the table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        output = trainer.train()
    # marks[k] is the end of step k+1; the clock starts at the end of the last warm-up step.
    assert len(marks) == t.max_steps and len(counts["real"]) == t.max_steps, (len(marks), len(counts["real"]))
    w = args.warmup
    start = marks[w - 1] if w > 0 else None
    if start is None:
        raise SystemExit("--warmup must be at least 1 (the Trainer's clock starts at the end of a step)")
    seconds = marks[-1] - start
    targets = sum(counts["targets"][w:])
    # The Trainer reports the mean loss over all steps; the per-step losses are not kept without logging.
    mean_loss = float(output.training_loss)
    return RunResult(name, t.max_steps - w, seconds, sum(counts["real"][w:]), sum(counts["padded"][w:]), targets,
                     mean_loss, counts["threads"], [b - a for a, b in zip(marks[w - 1:], marks[w:])])


# --- the report ----------------------------------------------------------------------------------------


VARIANTS = {
    # name: (batching, chunked_loss, description)
    "fizzbot": ("bucket", True, "fizzbot loop: length buckets + target-only chunked loss"),
    "fizzbot_pad": ("pad", True, "fizzbot loop, batching=pad (random order) + target-only loss"),
    "fizzbot_fullvocab": ("bucket", False, "fizzbot loop, length buckets, chunked_loss=False (full logits)"),
    "fizzbot_plain": ("pad", False, "fizzbot loop, batching=pad + full logits (the Trainer's recipe)"),
}


def median_result(results: list[RunResult]) -> RunResult:
    best = sorted(results, key=lambda r: r.tokens_per_s)[len(results) // 2]
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="measured optimizer steps per run (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps first (default 3, at least 1)")
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides (default 2)")
    parser.add_argument("--days", type=int, default=28, help="days of demo chat (default 28: ~17k training rows)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant, interleaved; the median is reported")
    parser.add_argument("--no-ablations", action="store_true", help="only fizzbot's default loop and the Trainer")
    parser.add_argument("--seed", type=int, default=0, help="which rows are drawn")
    parser.add_argument("--work-dir", help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--json", help="write the numbers to this JSON file")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1")

    logging.getLogger("fizzbot").setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="fizzbot-train-bench-"))
    if work.exists() and args.work_dir:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        setup = build_setup(args, work)
        names = ["hf_trainer", "fizzbot"] + ([] if args.no_ablations else ["fizzbot_pad", "fizzbot_fullvocab", "fizzbot_plain"])
        runs: dict[str, list[RunResult]] = {n: [] for n in names}
        for r in range(args.repeat):
            for n in names:
                t0 = time.perf_counter()
                if n == "hf_trainer":
                    result = run_hf_trainer(setup, args)
                else:
                    batching, chunked, _ = VARIANTS[n]
                    result = run_fizzbot(setup, args, batching, chunked, n)
                runs[n].append(result)
                log(f"{n} (repeat {r + 1}/{args.repeat}): {result.tokens_per_s:,.0f} tok/s, padding {result.padding_share:.0%}, "
                    f"{result.steps} steps in {result.seconds:.2f}s (run {time.perf_counter() - t0:.1f}s, {result.threads} threads)")
        report(args, setup, runs)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def report(args, setup: Setup, runs: dict[str, list[RunResult]]) -> None:
    chosen = {n: median_result(rs) for n, rs in runs.items()}
    base = chosen["hf_trainer"]
    trainer = "HF Trainer + peft" if args.method == "lora" else "HF Trainer"
    descriptions = {"hf_trainer": f"{trainer}: padded random batches, full-vocab loss", **{k: v[2] for k, v in VARIANTS.items()}}
    print()
    print(f"Training throughput, CPU, {args.threads} threads, method={args.method}, tiny model (hidden 192, 4 layers, "
          f"vocab {len(setup.job.tokenizer)}), batch {args.batch_size}, {args.steps} measured steps after {args.warmup}, "
          f"median of {args.repeat}; same {len(setup.rows)} rows on every side")
    header = f"{'run':<18} {'real tok/s':>11} {'padding':>8} {'s/step':>8} {'loss/tok':>9} {'vs HF':>7}  what"
    print(header)
    print("-" * len(header) + "-" * 40)
    for n, r in chosen.items():
        print(f"{n:<18} {r.tokens_per_s:>11,.0f} {r.padding_share:>8.1%} {r.seconds / r.steps:>8.3f} {r.mean_loss:>9.3f} "
              f"{r.tokens_per_s / base.tokens_per_s:>6.2f}x  {descriptions[n]}")
    ratio = chosen["fizzbot"].tokens_per_s / base.tokens_per_s
    print()
    print(f"fizzbot / HF Trainer: {ratio:.2f}x real tokens per second (goal >= 1.5x: {'met' if ratio >= 1.5 else 'NOT met'})")
    shares = {}
    if "fizzbot_plain" in chosen:
        plain = chosen["fizzbot_plain"].tokens_per_s
        shares = {
            "loop_vs_trainer": plain / base.tokens_per_s,
            "bucketing": chosen["fizzbot_fullvocab"].tokens_per_s / plain,
            "target_only_loss": chosen["fizzbot_pad"].tokens_per_s / plain,
            "bucketing_given_target_only": chosen["fizzbot"].tokens_per_s / chosen["fizzbot_pad"].tokens_per_s,
            "target_only_given_bucketing": chosen["fizzbot"].tokens_per_s / chosen["fizzbot_fullvocab"].tokens_per_s,
        }
        print("  what each part gives (ratios of tok/s):")
        print(f"    fizzbot's loop vs the Trainer, same recipe (fizzbot_plain / hf_trainer):  {shares['loop_vs_trainer']:.2f}x")
        print(f"    length bucketing alone (fizzbot_fullvocab / fizzbot_plain):               {shares['bucketing']:.2f}x")
        print(f"    target-only loss alone (fizzbot_pad / fizzbot_plain):                     {shares['target_only_loss']:.2f}x")
        print(f"    bucketing on top of target-only (fizzbot / fizzbot_pad):                  {shares['bucketing_given_target_only']:.2f}x")
        print(f"    target-only on top of bucketing (fizzbot / fizzbot_fullvocab):            {shares['target_only_given_bucketing']:.2f}x")
    print("  (loss/tok: fizzbot's is over the measured steps, the Trainer's its mean over all steps; a sanity check only)")
    if args.json:
        out = {
            "benchmark": "train_throughput",
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "vocab": len(setup.job.tokenizer),
            "rows": len(setup.rows),
            "torch_threads": {n: r.threads for n, r in chosen.items()},
            "results": {
                n: {
                    "tokens_per_s": r.tokens_per_s, "padding_share": r.padding_share, "seconds": r.seconds, "steps": r.steps,
                    "real_tokens": r.real_tokens, "padded_tokens": r.padded_tokens, "target_tokens": r.target_tokens,
                    "mean_loss": r.mean_loss, "all_tokens_per_s": [x.tokens_per_s for x in runs[n]],
                }
                for n, r in chosen.items()
            },
            "ratio_fizzbot_vs_hf": ratio,
            "shares": shares,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
