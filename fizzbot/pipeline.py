"""The whole job: prepare -> train -> deploy the best checkpoint (-> ask it something).

    fizzbot demo                      the embedded default, end to end, on this machine (then `fizzbot eval`)
    ray job submit --working-dir . -- python jobs/pipeline.py --config configs/demo.yaml
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fizzbot.config import FizzbotConfig, list_override, replace


def stage(title: str) -> None:
    print(f"\n==> {title}", file=sys.stderr, flush=True)


@dataclass
class PipelineResult:
    prepared: Path
    run_dir: Path
    checkpoint: str | Path  # a folder, or a URI when run.dir is one
    url: str | None
    conversation: list[dict]
    seconds: dict


def wait_healthy(url: str, timeout_s: float = 180.0) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the Serve endpoint {url} did not become healthy within {timeout_s:.0f}s")


def ask(url: str, cfg: FizzbotConfig, speaker: str, content: str, turns: int, seed: int = 0) -> list[dict]:
    """One POST /v1/generate: a short conversation continuing `speaker: content`."""
    import requests

    headers = {"Authorization": f"Bearer {cfg.serve.api_key}"} if cfg.serve.api_key else {}
    body = {"context": [{"username": speaker, "content": content}], "turns": turns, "seed": seed}
    response = requests.post(f"{url}/v1/generate", json=body, headers=headers, timeout=120)
    response.raise_for_status()
    return [{"username": speaker, "content": content}] + response.json()["messages"]


DEMO_CORPUS = Path("data/demo-corpus")


def make_missing_demo_corpus(cfg: FizzbotConfig) -> None:
    """The demo config works as written anywhere, a submitted job's working directory included: the
    demo corpus it reads (`data/demo-corpus`, git-ignored, so never uploaded with `--working-dir`) is
    written there when it is missing. Any other missing input stays an error."""
    from fizzbot.data.demo import write_demo_corpus

    for path in cfg.data.inputs:
        if Path(path) == DEMO_CORPUS and not Path(path).exists():
            stage(f"demo corpus -> {Path(path).absolute()} (data.inputs names it and it is not there)")
            write_demo_corpus(path, seed=cfg.data.seed)


def run_pipeline(cfg: FizzbotConfig, *, deploy: bool = True, question: tuple[str, str] | None = None, turns: int = 6) -> PipelineResult:
    from fizzbot.data.pipeline import prepare
    from fizzbot.ray_utils import ensure_ray
    from fizzbot.train.trainer import train

    seconds: dict[str, float] = {}
    ensure_ray()
    make_missing_demo_corpus(cfg)

    stage(f"prepare: {', '.join(cfg.data.inputs)} -> {cfg.data.output} (Ray Data)")
    started = time.perf_counter()
    summary = prepare(cfg.data)
    seconds["prepare"] = time.perf_counter() - started

    stage(f"train: {cfg.model.base} ({cfg.model.method}) on {cfg.training.num_workers} Ray Train workers")
    started = time.perf_counter()
    cfg = replace(cfg, f"data.path={summary.output}")
    result = train(cfg)
    seconds["train"] = time.perf_counter() - started
    if result.best_checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint in {result.run_dir}")

    url, conversation = None, []
    if deploy:
        from fizzbot.serve.app import run_server

        stage(f"serve: {result.best_checkpoint} (Ray Serve)")
        started = time.perf_counter()
        cfg = replace(cfg, f"serve.model_dir={result.best_checkpoint}")
        url = run_server(cfg)
        wait_healthy(url)
        seconds["serve"] = time.perf_counter() - started
        if question is not None:
            stage(f"ask: POST {url}/v1/generate")
            conversation = ask(url, cfg, question[0], question[1], turns)
    return PipelineResult(summary.output, result.run_dir, result.best_checkpoint, url, conversation, seconds)


def demo_question(speaker_map_path: Path) -> tuple[str, str]:
    """A question in the demo's #dev channel, from its most question-asking persona when present."""
    from fizzbot.chat.speakers import SpeakerMap

    names = [s.username for s in SpeakerMap.load(speaker_map_path).speakers]
    who = "byteberry" if "byteberry" in names else names[0]
    return who, "anyone know why my tests pass locally but fail in CI?"


def run_demo(cfg: FizzbotConfig, corpus_dir: Path) -> int:
    """`fizzbot demo`: demo corpus -> prepare -> train -> serve -> ask -> print -> shut down -> evaluate."""
    from ray import serve

    from fizzbot.data.demo import write_demo_corpus

    total = time.perf_counter()
    stage(f"demo corpus -> {corpus_dir}")
    corpus = write_demo_corpus(corpus_dir, seed=cfg.data.seed)
    print(f"{corpus['total_messages']:,} messages in {len(corpus['files'])} channels", file=sys.stderr)
    cfg = replace(cfg, list_override("data.inputs", [str(corpus_dir)]))
    try:
        result = run_pipeline(cfg, deploy=True, question=None)
        who, content = demo_question(result.prepared / "speaker_map.json")
        stage(f"ask: POST {result.url}/v1/generate")
        conversation = ask(result.url, cfg, who, content, turns=cfg.generate.turns)
    finally:
        try:
            serve.shutdown()
        except Exception:
            pass
    print("\n--- a conversation in the demo channel, continued by the model ---")
    for message in conversation:
        print(f"{message['username']}: {message['content']}", flush=True)

    from fizzbot.eval.measures import summary_line
    from fizzbot.eval.run import eval_config, evaluate_checkpoint

    stage(f"evaluate: {result.checkpoint} (fizzbot eval)")
    started = time.perf_counter()
    evaluated = evaluate_checkpoint(result.checkpoint, eval_config(result.checkpoint, data=str(result.prepared)))
    result.seconds["eval"] = time.perf_counter() - started
    style = evaluated.doc.get("style") or {}
    print("\n--- does it sound like the channel? ---")
    print(summary_line(evaluated.doc["figures"]))
    if style:
        print(f"style: generated messages attributed to their speaker {style['generated_acc']:.3f} "
              f"of the time, real held-out ones {style['real_acc']:.3f} (chance {style['chance']:.3f})")
    took = time.perf_counter() - total
    parts = ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
    print(
        f"\n--- done in {took:.0f}s ({parts}) ---\n"
        f"data:        {result.prepared}  (stats.json, report.png)\n"
        f"run:         {result.run_dir}  (metrics.jsonl, loss_curves.png, tensorboard/)\n"
        f"checkpoint:  {result.checkpoint}\n"
        f"report:      {evaluated.report}  (eval.json, pictures)\n"
        "\ntry next:\n"
        f"  .venv/bin/fizzbot generate --latest --speaker pixelpaws --content 'hey all' --turns 5\n"
        f"  .venv/bin/fizzbot generate --latest --speaker kiwi_kat --interactive\n"
        f"  .venv/bin/fizzbot serve --config configs/serve.yaml     # then: curl localhost:8000/v1/models\n"
        f"  .venv/bin/fizzbot eval --latest --config configs/demo.yaml   # the report again, after more training\n"
        f"  .venv/bin/tensorboard --logdir {result.run_dir}/tensorboard"
    )
    return 0
