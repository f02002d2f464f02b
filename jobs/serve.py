"""Ray job: deploy a checkpoint (serve.model_dir, default the newest run's best) as the Serve application.

    ray job submit --working-dir . -- python jobs/serve.py --config configs/serve.yaml

Serve applications outlive the job that deployed them; `serve shutdown` (or `serve delete fizzbot`)
takes it down.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from _common import parse

    _, cfg = parse("Deploy the fizzbot Serve application on the Ray cluster.", argv)
    from fizzbot.pipeline import wait_healthy
    from fizzbot.serve.app import run_server

    url = run_server(cfg)
    wait_healthy(url)
    print(f"fizzbot is serving at {url}")
    return 0


if __name__ == "__main__":
    from _common import run_job

    raise SystemExit(run_job(main))
