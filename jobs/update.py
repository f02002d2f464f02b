"""Ray job: continue the latest model on a channel's new messages, and promote it if it is better
(run it on a schedule, e.g. nightly after the bot's opt-in logs grew).

    ray job submit --working-dir . -- python jobs/update.py --config configs/demo.yaml --latest \
        --input /shared/channel-logs update.serve_app=fizzbot

run.dir and the inputs must be where the job's node reads them (a shared filesystem or a URI on a
multi-node cluster). Exits 0 whether or not the new model is promoted; the decision is printed and
written into the new run's fizzbot_update.json.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from _common import parse

    def options(parser):
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--latest", action="store_true", help="the newest promoted run's best checkpoint (under run.dir)")
        where.add_argument("--model-dir", help="a checkpoint folder or URI")
        parser.add_argument("--input", action="append", required=True, help="a new export file or folder (repeatable)")

    args, cfg = parse("Update a fizzbot model with new messages on the Ray cluster.", argv, options)
    from fizzbot.artifacts.checkpoint import find_latest
    from fizzbot.update import run_update

    where = args.model_dir if args.model_dir else find_latest(cfg.run.dir)
    result = run_update(cfg, where, args.input, list(args.overrides))
    print(f"{'promoted' if result.promoted else 'not promoted'}: {result.report['reason']}")
    print(f"new checkpoint: {result.new_checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
