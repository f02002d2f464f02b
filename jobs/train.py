"""Ray job: train on prepared data (Ray Train TorchTrainer); resumes the newest unfinished run of run.name
when its training settings and data match (run.resume).

    ray job submit --working-dir . -- python jobs/train.py --config configs/train_gpu_qlora.yaml
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from _common import parse

    _, cfg = parse("Train fizzbot on the Ray cluster.", argv)
    from fizzbot.train.trainer import train

    result = train(cfg)
    print(f"trained to step {result.final_step}; best checkpoint {result.best_checkpoint}")
    return 0


if __name__ == "__main__":
    from _common import run_job

    raise SystemExit(run_job(main))
