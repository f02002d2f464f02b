#!/usr/bin/env python
"""Which CPU defaults learn a real channel best in a fixed time? A search on the Ubuntu IRC logs.

    .venv/bin/python benchmarks/cpu_defaults_search.py --minutes 10 --json docs/bench_cpu_defaults.json
    .venv/bin/python benchmarks/cpu_defaults_search.py --minutes 0.5 --limit 2        # a quick check
    .venv/bin/python benchmarks/cpu_defaults_search.py --grid my_grid.yaml --candidates base,wide

Each candidate is a set of config overrides on configs/train_cpu.yaml (the tiny model's shape,
tokenizer size, context length, speaker cap, learning rate, ...). For every distinct data setting
(the `data.*` overrides) the logs are prepared once (Ray Data). Every candidate then trains with Ray
Train on `--workers` CPU workers for `--minutes` of wall clock (`training.max_minutes`): first a
short timing run (`--calibration-steps`) measures its seconds per step, so that `training.max_steps`
(which the cosine schedule follows) is about what fits in the budget, and the clock stops it in any
case. Evaluation happens once, after the clock: `fizzbot eval`'s measures on `--eval-rows`
validation rows, each candidate read against its own baselines in the same run (the issue's goals:
context gain >= 0.3 nats, named-speaker accuracy >= 1.5x the better speaker baseline, target loss
<= 0.8x the bigram baseline). Prints a table; `--json` writes every figure.

The logs are read from the workspace's shared folder (`--logs`, default ../shared/data/ubuntu-irc/logs
beside the repository); without them the search is skipped. Timings need a quiet machine: other
work on the cores shortens every candidate's training by the same clock.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_LOGS = REPO.parent / "shared" / "data" / "ubuntu-irc" / "logs"

# Every candidate trains on data whose windows include empty contexts (data.min_context_messages=0):
# a model that has learned a target after no context is one whose "context removed" loss, and so
# its context gain, means something (fizzbot.eval.measures.References). One change at a time from
# `base` (configs/train_cpu.yaml as shipped otherwise), then a few combinations.
DATA = ["data.min_context_messages=0"]
DEFAULT_GRID = [
    {"name": "base", "overrides": DATA},
    {"name": "speakers32", "overrides": DATA + ["data.max_speakers=32"]},
    {"name": "speakers16", "overrides": DATA + ["data.max_speakers=16"]},
    {"name": "context6", "overrides": DATA + ["data.max_context_messages=6", "data.max_context_chars=800", "training.max_seq_len=256"]},
    {"name": "small", "overrides": DATA + ["model.tiny.hidden_size=192", "model.tiny.intermediate_size=512"]},
    {"name": "deep6", "overrides": DATA + ["model.tiny.hidden_size=192", "model.tiny.num_layers=6", "model.tiny.intermediate_size=512"]},
    {"name": "vocab2k", "overrides": DATA + ["model.tiny.vocab_size=2048"]},
    {"name": "vocab8k", "overrides": DATA + ["model.tiny.vocab_size=8192"]},
    {"name": "lr2e-3", "overrides": DATA + ["training.learning_rate=2e-3"]},
    {"name": "lr5e-4", "overrides": DATA + ["training.learning_rate=5e-4"]},
    {"name": "batch16", "overrides": DATA + ["training.batch_size=16", "training.grad_accum_steps=1"]},
    # The loss on every message of a window, not only its last (training.train_on_context): ~6x the
    # supervised tokens, speaker tokens included, for the same forward passes.
    {"name": "context-loss", "overrides": DATA + ["training.train_on_context=true"]},
    {"name": "context-loss-speakers128", "overrides": DATA + ["training.train_on_context=true", "data.max_speakers=128"]},
    # The long tail's messages carry their author's name (data.name_others): the addressee of a reply
    # and a returning speaker can be copied from the context. With fixed 6-message windows too: every
    # shorter context is still trained inside each row (train_on_context), and every target is read
    # after the context a served prompt has.
    {"name": "names", "overrides": DATA + ["data.name_others=true"]},
    {"name": "names-context6", "overrides": ["data.name_others=true", "data.min_context_messages=6"]},
    {"name": "small-context6-lr2e-3", "overrides": DATA + [
        "model.tiny.hidden_size=192", "model.tiny.intermediate_size=512", "data.max_context_messages=6",
        "data.max_context_chars=800", "training.max_seq_len=256", "training.learning_rate=2e-3"]},
]


def log(message: str) -> None:
    print(f"[search] {message}", file=sys.stderr, flush=True)


def read_grid(path: str | None) -> list[dict]:
    """The candidates: a YAML (or JSON) list of {name, overrides: [key=value, ...]}, or the built-in grid."""
    if path is None:
        return DEFAULT_GRID
    import yaml

    grid = yaml.safe_load(Path(path).read_text())
    if not isinstance(grid, list) or not all(isinstance(c, dict) and "name" in c for c in grid):
        raise SystemExit(f"{path}: expected a list of {{name, overrides}} candidates")
    return [{"name": str(c["name"]), "overrides": [str(o) for o in c.get("overrides", [])]} for c in grid]


def data_key(overrides: list[str]) -> str:
    data = sorted(o for o in overrides if o.startswith("data."))
    return hashlib.sha1(json.dumps(data).encode()).hexdigest()[:10]


def metrics_of(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def seconds_per_step(run_dir: Path) -> float:
    """From the timing run's train records (time of each log line), leaving out the first window
    (start-up, the first batches)."""
    train = [m for m in metrics_of(run_dir) if m["kind"] == "train"]
    if len(train) < 2:
        raise RuntimeError(f"{run_dir}: the timing run logged {len(train)} train records; raise --calibration-steps")
    return (train[-1]["time"] - train[0]["time"]) / (train[-1]["step"] - train[0]["step"])


def run_candidate(candidate: dict, prepared: Path, args, work: Path) -> dict:
    from fizzbot.config import load_config
    from fizzbot.eval.run import eval_config, evaluate_checkpoint
    from fizzbot.train.trainer import train

    name = candidate["name"]
    model_and_training = [o for o in candidate["overrides"] if not o.startswith("data.")]
    common = [f"data.path={prepared}", f"run.dir={work / 'runs'}", f"training.num_workers={args.workers}",
              "run.resume=false", "training.eval_steps=1000000000", "training.save_steps=1000000000"]
    calibration = args.calibration_steps
    cfg = load_config(args.config, common + model_and_training + [
        f"run.name={name}-timing", f"training.max_steps={calibration}", f"training.log_steps={max(1, calibration // 4)}",
        f"training.warmup_steps={min(calibration, 5)}", "training.eval_max_batches=1",
    ])
    log(f"{name}: timing {calibration} steps")
    timing = train(cfg)
    step_s = seconds_per_step(timing.run_dir)
    shutil.rmtree(timing.run_dir, ignore_errors=True)
    budget_s = 60 * args.minutes
    # The final evaluation and checkpoint come out of the budget too: aim the schedule at 95 % of it.
    steps = max(calibration, int(0.95 * budget_s / step_s))
    base = load_config(args.config, model_and_training)
    warmup = min(base.training.warmup_steps, steps // 10)
    cfg = load_config(args.config, common + model_and_training + [
        f"run.name={name}", f"training.max_steps={steps}", f"training.max_minutes={args.minutes}",
        f"training.warmup_steps={warmup}", f"training.log_steps={max(10, steps // 20)}",
    ])
    log(f"{name}: {step_s:.2f} s/step -> max_steps {steps} in {args.minutes:g} min")
    started = time.perf_counter()
    result = train(cfg)
    trained_s = time.perf_counter() - started
    last_train = [m for m in metrics_of(result.run_dir) if m["kind"] == "train"]
    training_seconds = last_train[-1]["time"] - metrics_of(result.run_dir)[0]["time"] if last_train else None

    overrides = [f"eval.max_rows={args.eval_rows}", "eval.style_speakers=0", "eval.conversations=2", "eval.conversation_turns=4"]
    evaluated = evaluate_checkpoint(result.best_checkpoint, eval_config(result.best_checkpoint, overrides=overrides))
    doc = evaluated.doc
    return {
        "name": name,
        "overrides": candidate["overrides"],
        "seconds_per_step_timed": step_s,
        "max_steps": steps,
        "steps_done": result.final_step,
        "training_seconds": training_seconds,
        "train_command_seconds": trained_s,
        "checkpoint": str(result.best_checkpoint),
        "report": str(evaluated.report),
        "figures": doc["figures"],
        "goals": doc["goals"],
        "train_empty_context_share": doc.get("train_empty_context_share"),
    }


def table(results: list[dict]) -> str:
    def f(value, digits=3):
        return "n/a" if value is None else f"{value:.{digits}f}"

    header = (f"{'candidate':<24} {'steps':>6} {'min':>5} {'val':>6} {'bigram':>6} {'ratio':>6} {'gain':>6} "
              f"{'named':>6} {'best bl':>7} {'x bl':>5} {'F1':>6} {'goals':>5}")
    lines = [header, "-" * len(header)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['name']:<24} error: {r['error']}")
            continue
        g = r["figures"]
        best = max((v for v in (g["named_majority_acc"], g["named_bigram_acc"]) if v is not None), default=None)
        met = sum(1 for goal in r["goals"] if goal["met"])
        minutes = (r["training_seconds"] or 0) / 60
        lines.append(
            f"{r['name']:<24} {r['steps_done']:>6} {minutes:>5.1f} {f(g['val_loss']):>6} {f(g['bigram_loss']):>6} "
            f"{f(g['loss_vs_bigram'], 2):>6} {f(g['context_gain']):>6} {f(g['named_speaker_acc']):>6} {f(best):>7} "
            f"{f(g['named_acc_vs_best_baseline'], 2):>5} {f(g['named_speaker_macro_f1']):>6} {met:>3}/{len(r['goals'])}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", default=str(DEFAULT_LOGS), help="the Ubuntu IRC logs folder")
    parser.add_argument("--config", default=str(REPO / "configs" / "train_cpu.yaml"), help="the base config of every candidate")
    parser.add_argument("--grid", help="YAML list of {name, overrides}; default: the built-in grid")
    parser.add_argument("--candidates", help="comma-separated names to run (default: all)")
    parser.add_argument("--limit", type=int, help="run only the first N candidates")
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall clock per candidate")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train CPU workers")
    parser.add_argument("--calibration-steps", type=int, default=60, help="steps of the timing run (20 overestimated a step by 15 %%: the first windows are slow)")
    parser.add_argument("--eval-rows", type=int, default=2000, help="validation rows fizzbot eval scores")
    parser.add_argument("--work", help="folder for prepared data and runs (default: a temporary one, removed)")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args(argv)

    logs = Path(args.logs)
    if not logs.is_dir():
        print(f"skipped: no logs at {logs} (the workspace's shared/ folder holds them)")
        return 0
    grid = read_grid(args.grid)
    if args.candidates:
        wanted = args.candidates.split(",")
        unknown = sorted(set(wanted) - {c["name"] for c in grid})
        if unknown:
            raise SystemExit(f"unknown candidates: {', '.join(unknown)}")
        grid = [c for c in grid if c["name"] in wanted]
    grid = grid[: args.limit] if args.limit else grid

    from fizzbot.config import list_override, load_config
    from fizzbot.data.pipeline import prepare
    from fizzbot.ray_utils import ensure_ray

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="fizzbot-search-"))
    started = time.perf_counter()
    ensure_ray(num_cpus=args.workers)
    prepared: dict[str, Path] = {}
    results = []
    try:
        for candidate in grid:
            key = data_key(candidate["overrides"])
            if key not in prepared:
                data_overrides = [o for o in candidate["overrides"] if o.startswith("data.")]
                cfg = load_config(args.config, data_overrides + [list_override("data.inputs", [str(logs)]), f"data.output={work / 'data' / key}"])
                log(f"preparing {logs} with {data_overrides or 'the defaults'}")
                summary = prepare(cfg.data)
                prepared[key] = summary.output
            try:
                results.append(run_candidate(candidate, prepared[key], args, work))
            except Exception as exc:  # one failing candidate must not lose the others' figures
                log(f"{candidate['name']} failed: {exc!r}")
                results.append({"name": candidate["name"], "overrides": candidate["overrides"], "error": repr(exc)})
            print(table(results), flush=True)
    finally:
        import ray

        ray.shutdown()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    report = {
        "logs": str(logs), "config": args.config, "minutes": args.minutes, "workers": args.workers,
        "eval_rows": args.eval_rows, "seconds": time.perf_counter() - started, "candidates": results,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {args.json}")
    ok = [r for r in results if "error" not in r]
    if ok:
        best = min(ok, key=lambda r: r["figures"]["val_loss"])
        log(f"lowest validation loss: {best['name']} ({best['figures']['val_loss']:.3f})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
