"""Ray job: prepare -> train -> deploy the best checkpoint, in one submission.

    ray job submit --working-dir . -- python jobs/pipeline.py --config configs/demo.yaml
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from _common import parse

    def options(parser):
        parser.add_argument("--no-deploy", action="store_true", help="stop after training")
        parser.add_argument("--ask", nargs=2, metavar=("USERNAME", "TEXT"), help="ask the deployed model once")

    args, cfg = parse("Run fizzbot's whole pipeline on the Ray cluster.", argv, options)
    from fizzbot.pipeline import run_pipeline

    result = run_pipeline(cfg, deploy=not args.no_deploy, question=tuple(args.ask) if args.ask else None)
    print(f"prepared: {result.prepared}\nrun: {result.run_dir}\ncheckpoint: {result.checkpoint}")
    if result.url:
        print(f"serving: {result.url}")
    for message in result.conversation:
        print(f"{message['username']}: {message['content']}")
    return 0


if __name__ == "__main__":
    from _common import run_job

    raise SystemExit(run_job(main))
