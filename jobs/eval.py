"""Ray job: evaluate a checkpoint next to training on the cluster (generation batched through the engine).

    ray job submit --working-dir . -- python jobs/eval.py --config configs/demo.yaml --latest
    ray job submit --working-dir . -- python jobs/eval.py --config configs/demo.yaml --model-dir runs/demo/<stamp>/checkpoint-300

Writes <checkpoint>/eval/ (report.html, its pictures, eval.json) where the job runs: run.dir must be
a filesystem the job's node reads and writes (a shared one on a multi-node cluster).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from _common import parse

    def options(parser):
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--latest", action="store_true", help="the newest run's best checkpoint (under run.dir)")
        where.add_argument("--model-dir", help="a checkpoint folder")
        parser.add_argument("--data", help="prepared data (default: the config's data.path)")
        parser.add_argument("--output", help="where to write the report (default: MODEL_DIR/eval)")

    args, cfg = parse("Evaluate a fizzbot checkpoint on the Ray cluster.", argv, options)
    from pathlib import Path

    from fizzbot.artifacts.checkpoint import find_latest
    from fizzbot.eval.measures import summary_line
    from fizzbot.eval.run import eval_config, evaluate_checkpoint

    model_dir = Path(args.model_dir) if args.model_dir else find_latest(cfg.run.dir)
    cfg = eval_config(model_dir, args.config, args.overrides, data=args.data)
    outcome = evaluate_checkpoint(model_dir, cfg, output=args.output)
    print(summary_line(outcome.doc["figures"]))
    print(f"report: {outcome.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
