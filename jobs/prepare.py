"""Ray job: chat exports -> prepared data (Ray Data).

    ray job submit --working-dir . -- python jobs/prepare.py --config configs/demo.yaml
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from _common import parse

    _, cfg = parse("Prepare chat exports on the Ray cluster.", argv)
    from fizzbot.data.pipeline import prepare
    from fizzbot.pipeline import make_missing_demo_corpus

    make_missing_demo_corpus(cfg)
    summary = prepare(cfg.data)
    print(f"prepared {summary.train_examples} train / {summary.val_examples} val examples -> {summary.output}")
    return 0


if __name__ == "__main__":
    from _common import run_job

    raise SystemExit(run_job(main))
