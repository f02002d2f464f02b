"""`fizzbot train`: the driver. Checks, the run folder, the tokenizer, then Ray Train's TorchTrainer.

    fizzbot train --config configs/train_cpu.yaml [--resume=auto|force|never] [key=value ...]

Everything that can be refused is refused here, before a worker starts: a missing or empty data
folder, rows without a target, a tokenizer that splits a speaker token, DeepSpeed on CPU, a GPU
config where the cluster has no GPU, a speaker map that disagrees with the checkpoint to continue.
Runs go to `<run.dir>/<run.name>/<timestamp>/` (a local folder or a URI); the same command resumes
the newest unfinished run from its last checkpoint when its settings and data match (`runs.py`).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fizzbot.artifacts import checkpoint as ckpt
from fizzbot.artifacts import storage
from fizzbot.artifacts.io import atomic_write_text, claim_folder
from fizzbot.config import ConfigError, FizzbotConfig
from fizzbot.train.inputs import TrainingData, resolve_data
from fizzbot.train.runs import RUN_RECORD, TOKENIZER_DIR, RunPaths


def _log(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)


@dataclass
class TrainResult:
    run_dir: Path  # where the driver wrote config, metrics and plots (a URI run's local mirror)
    best_checkpoint: str | Path | None  # a local folder, or a URI for a URI run
    latest_checkpoint: str | Path | None
    final_step: int
    metrics: dict
    seconds: float
    location: str | Path | None = None  # the run folder in storage (a URI for a URI run)


# --- checks --------------------------------------------------------------------------------------


def check_environment(cfg: FizzbotConfig, use_ray: bool) -> None:
    t = cfg.training
    if cfg.model.method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError("model.method=qlora needs bitsandbytes (pip install bitsandbytes), or use model.method=lora") from None
    if t.deepspeed:
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise ConfigError("training.deepspeed=true needs deepspeed installed (pip install deepspeed)") from None
    if t.use_gpu:
        if use_ray:
            import ray

            gpus = ray.cluster_resources().get("GPU", 0)
            if gpus < t.num_workers and not t.wait_for_gpus:
                raise ConfigError(
                    f"training.use_gpu=true with {t.num_workers} workers, but this Ray cluster has {gpus:g} GPUs: "
                    "train on CPU (configs/train_cpu.yaml or training.use_gpu=false), lower training.num_workers, "
                    "or set training.wait_for_gpus=true on an autoscaling cluster"
                )
        else:
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("training.use_gpu=true but this machine has no CUDA GPU: use training.use_gpu=false")


# --- the tokenizer -------------------------------------------------------------------------------


def base_tokenizer(cfg: FizzbotConfig, data: TrainingData):
    """The tokenizer before the chat tokens: the base model's (or model.tokenizer), or a tiny BPE
    trained on the targets; None for the tiny model's when it is not needed (`build_tokenizer`)."""
    from transformers import AutoTokenizer

    from fizzbot.model.tokenizer import train_tiny_tokenizer

    if cfg.model.base == "tiny" and cfg.model.tokenizer is None:
        return train_tiny_tokenizer(_tokenizer_texts(data.train_path), cfg.model.tiny.vocab_size)
    source = cfg.model.tokenizer or cfg.model.base
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.model.trust_remote_code)
    except OSError as exc:
        raise FileNotFoundError(f"tokenizer {source!r} cannot be loaded: {exc}") from None


def build_tokenizer(cfg: FizzbotConfig, data: TrainingData, run_dir: Path, base=None):
    """The run's tokenizer, saved in the run folder; a resumed run reuses it (a retrained BPE would differ).

    `base`: the base tokenizer when the caller has loaded it already (it gets the chat tokens)."""
    from transformers import AutoTokenizer

    from fizzbot.model.tokenizer import add_chat_tokens, check_chat_tokens

    saved = run_dir / TOKENIZER_DIR
    speaker_tokens = data.speaker_map.tokens
    if (saved / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(saved)
        check_chat_tokens(tokenizer, speaker_tokens)
        return tokenizer
    tokenizer = base if base is not None else base_tokenizer(cfg, data)
    add_chat_tokens(tokenizer, speaker_tokens)
    tokenizer.save_pretrained(saved)
    return tokenizer


def _tokenizer_texts(path: Path, limit: int = 200_000):
    """Message texts for the BPE: each target once, speaker token and <EOT> removed."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh):
            if number >= limit:
                break
            target = json.loads(raw)["target"]
            yield target.split(" ", 1)[-1].removesuffix(" <EOT>")


# --- the run ----------------------------------------------------------------------------------------


def train(cfg: FizzbotConfig, *, use_ray: bool = True) -> TrainResult:
    from fizzbot.train import runs

    started = time.perf_counter()
    if use_ray:
        from fizzbot.ray_utils import ensure_ray

        ensure_ray()
    elif storage.is_uri(cfg.run.dir):
        raise ConfigError(f"run.dir={cfg.run.dir} is a URI: that needs Ray Train's storage (drop --no-ray)")
    check_environment(cfg, use_ray)
    if not storage.is_uri(cfg.run.dir):  # never write into (or resume from) a folder fizzbot did not make
        claim_folder(Path(cfg.run.dir) / cfg.run.name, key="run.dir", written_by="fizzbot train")
    # The data first: whether the last run may resume depends on it (its fingerprint). A single
    # JSONL is split into a scratch folder, then kept with the run (run_dir/data/).
    scratch = Path(tempfile.mkdtemp(prefix="fizzbot-split-"))
    try:
        data = resolve_data(cfg, scratch)
        # The run's config (and so every checkpoint's fizzbot.yaml) says how its data was windowed,
        # which is how serving trims and anonymizes contexts: the prepared folder's own settings win.
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=data.context)})
        # Rows are checked in the driver before anything reads them (the tiny BPE is trained on the
        # targets), so a row without a target is refused by file and line before any worker starts.
        from fizzbot.train.data import read_rows

        for path in (data.train_path, data.val_path):
            read_rows(path)
        runs.check_base_speaker_map(cfg, data.speaker_map)
        # Ids the base's embedding rows were trained for: fizzbot's chat tokens come after them (the
        # tiny model is built with the chat tokens from the start: None).
        base = None if cfg.model.base == "tiny" else base_tokenizer(cfg, data)
        base_tokens = None if base is None else len(base)
        wanted = runs.run_record(cfg, data.fingerprint, data.speaker_map, base_tokens)
        run, resuming = runs.choose_run(cfg, wanted)
        run_dir = run.local_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if data.train_path.parent == scratch:
            for name in ("train_path", "val_path"):
                kept = run_dir / "data" / getattr(data, name).name
                kept.parent.mkdir(exist_ok=True)
                shutil.move(getattr(data, name), kept)
                setattr(data, name, kept)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if resuming:
        runs.pull_driver_files(run)
    _log(f"{'resuming' if resuming else 'starting'} run {run.location}")
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    # What the run's checkpoints depend on from now on (after run.resume=force, the new settings).
    atomic_write_text(run_dir / RUN_RECORD, json.dumps(wanted, indent=2, ensure_ascii=False) + "\n")

    tokenizer = build_tokenizer(cfg, data, run_dir, base)
    runs.push_driver_files(run)  # a URI run: config, record and tokenizer beside the checkpoints from the start
    speaker_ids = tokenizer.convert_tokens_to_ids(data.speaker_map.tokens)
    chat_ids = speaker_ids + [tokenizer.convert_tokens_to_ids("<EOT>")]
    from fizzbot.train.loop import JobSpec

    job = JobSpec(
        run_dir=str(run.location),
        metrics_dir=str(run_dir),
        base=cfg.model.base,
        tokenizer=tokenizer,
        speaker_map=data.speaker_map.to_json(),
        chat_token_ids=chat_ids,
        speaker_token_ids=speaker_ids,
        config_yaml=cfg.to_yaml(),
        base_tokens=base_tokens,
        data_fingerprint=data.fingerprint,
    )
    if use_ray:
        final = _fit_with_ray(cfg, job, data, run)
        # Ray Train prunes the checkpoints it recorded; one that an attempt wrote just before it died, before
        # Ray recorded it, would stay beyond training.keep_checkpoints for good.
        for path in ckpt.prune(run.location, cfg.training.keep_checkpoints):
            _log(f"removed {path} (beyond training.keep_checkpoints)")
    else:
        final = _fit_locally(cfg, job, data, run_dir)

    metrics = _read_metrics(run_dir)
    try:
        from fizzbot.train.plots import draw_loss_curves

        draw_loss_curves(metrics, run_dir / "loss_curves.png")
    except Exception as exc:  # a missing plot must not fail a finished run
        _log(f"loss curve plot skipped: {exc}")
    atomic_write_text(run_dir / ckpt.COMPLETED, json.dumps({"final_step": final, "finished": dt.datetime.now().isoformat()}) + "\n")
    runs.push_driver_files(run)
    best = ckpt.best_checkpoint(run.location)
    found = ckpt.checkpoints_of(run.location)
    seconds = time.perf_counter() - started
    last_eval = next((m for m in reversed(metrics) if m.get("kind") == "eval"), {})
    _log(f"done in {seconds:.0f}s: step {final}, best checkpoint {best}")
    return TrainResult(run_dir, best, found[-1][1] if found else None, final, last_eval, seconds, run.location)


def _fit_locally(cfg: FizzbotConfig, job, data: TrainingData, run_dir: Path) -> int:
    from fizzbot.train.data import RowTokenizer, read_rows
    from fizzbot.train.loop import LocalSession, run_training

    tokenize = RowTokenizer(job.tokenizer, cfg.training.max_seq_len, job.speaker_token_ids)
    rows = {}
    for name, path in (("train", data.train_path), ("val", data.val_path)):
        contexts, targets = read_rows(path)
        rows[name] = tokenize(contexts, targets, where=str(path))
    state = run_training(cfg, job, LocalSession(str(run_dir), rows, cfg.training.keep_checkpoints))
    return state.step


def _fit_with_ray(cfg: FizzbotConfig, job, data: TrainingData, run: RunPaths) -> int:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from fizzbot.train.loop import train_loop_per_worker
    from fizzbot.train.tokenize import tokenized_dataset

    from fizzbot.ray_utils import storage_runtime_env

    t = cfg.training
    datasets = {
        name: tokenized_dataset(str(path), job.tokenizer, t.max_seq_len, job.speaker_token_ids)
        for name, path in (("train", data.train_path), ("val", data.val_path))
    }
    fs, storage_path = storage.filesystem(run.storage)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.model_dump(mode="json"), "job": job},
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers,
            use_gpu=t.use_gpu,
            resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=run.name,
            # The filesystem object carries a URI's endpoint and credentials to the controller and workers.
            storage_path=storage_path,
            storage_filesystem=fs,
            worker_runtime_env=storage_runtime_env(),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=t.keep_checkpoints, checkpoint_score_attribute="val_loss", checkpoint_score_order="min"
            ),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    return int(result.metrics.get("step", 0)) if result.metrics else 0


def _read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
