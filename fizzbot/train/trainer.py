"""`fizzbot train`: the driver. Checks, the run folder, the tokenizer, then Ray Train's TorchTrainer.

    fizzbot train --config configs/train_cpu.yaml [key=value ...]

Everything that can be refused is refused here, before a worker starts: a missing or empty data
folder, rows without a target, a tokenizer that splits a speaker token, DeepSpeed on CPU, a GPU
config where the cluster has no GPU. Runs go to `<run.dir>/<run.name>/<timestamp>/`; the same
command with the same run name resumes the newest unfinished run from its last checkpoint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fizzbot.config import ConfigError, FizzbotConfig
from fizzbot.artifacts.io import atomic_write_text, claim_folder
from fizzbot.errors import InputError
from fizzbot.chat.speakers import SpeakerMap
from fizzbot.artifacts import checkpoint as ckpt
from fizzbot.artifacts.prepared import open_prepared


def _log(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)


@dataclass
class TrainingData:
    train_path: Path
    val_path: Path
    speaker_map: SpeakerMap


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path | None
    latest_checkpoint: Path | None
    final_step: int
    metrics: dict
    seconds: float


def is_remote(path: str) -> bool:
    return "://" in path


# --- data ----------------------------------------------------------------------------------------


def resolve_data(cfg: FizzbotConfig, run_dir: Path) -> TrainingData:
    """A prepared folder, or one JSONL (the original tool's) split by val_split or val_jsonl."""
    prepared = open_prepared(cfg.data.path, cfg.data.val_jsonl)
    train_path, val_path = prepared.train_path, prepared.val_path
    if val_path is None:
        train_path, val_path = _split_single_file(train_path, cfg.data.val_split, run_dir / "data")
    if not val_path.is_file() or val_path.stat().st_size == 0:
        raise InputError(
            "no validation rows (set data.val_split above 0 when preparing, or data.val_jsonl)", path=str(val_path)
        )
    return TrainingData(train_path, val_path, prepared.speaker_map)


def _split_single_file(path: Path, val_split: float, out: Path) -> tuple[Path, Path]:
    """Hold out rows by a hash of their target message, so the split is stable and no target is in both."""
    if val_split <= 0:
        raise InputError("a single JSONL needs data.val_split > 0 or data.val_jsonl", path=str(path))
    out.mkdir(parents=True, exist_ok=True)
    from fizzbot.artifacts.io import iter_jsonl

    train_lines, val_lines = [], []
    threshold = int(val_split * 2**32)
    for number, row in iter_jsonl(path):
        if not isinstance(row.get("target"), str):
            raise InputError("row has no target", path=str(path), line=number, field="target")
        key = (row.get("channel", ""), row.get("ts", ""), row["target"])
        digest = int.from_bytes(hashlib.blake2b(json.dumps(key).encode(), digest_size=4).digest(), "big")
        (val_lines if digest < threshold else train_lines).append(json.dumps(row, ensure_ascii=False).encode())
    train_path, val_path = out / "train.jsonl", out / "val.jsonl"
    train_path.write_bytes(b"\n".join(train_lines) + b"\n")
    val_path.write_bytes(b"\n".join(val_lines) + b"\n" if val_lines else b"")
    return train_path, val_path


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


# --- run folders ---------------------------------------------------------------------------------


@dataclass
class RunPaths:
    """Where a run lives: `storage` (a local folder or a URI, Ray Train's storage_path) / `name`.

    `local_dir` holds what the driver writes during the run (config, tokenizer, metrics); for a
    local run.dir it is the run folder itself, for a URI a local mirror uploaded at the end.
    """

    storage: str
    name: str
    local_dir: Path

    @property
    def remote(self) -> bool:
        return is_remote(self.storage)


def _filesystem(uri: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri) if is_remote(uri) else (pafs.LocalFileSystem(), uri)


def choose_run_dir(cfg: FizzbotConfig) -> tuple[RunPaths, bool]:
    """The run: the newest unfinished one of this name when resuming, else a new timestamp."""
    import pyarrow.fs as pafs

    storage = f"{cfg.run.dir.rstrip('/')}/{cfg.run.name}" if is_remote(cfg.run.dir) else str((Path(cfg.run.dir) / cfg.run.name).resolve())
    fs, base = _filesystem(storage)
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    names = sorted((i.base_name for i in infos if i.type == pafs.FileType.Directory and not i.base_name.startswith(".")), reverse=True)

    def paths(name: str) -> RunPaths:
        local = Path.home() / ".cache" / "fizzbot" / "runs" / cfg.run.name / name if is_remote(storage) else Path(storage) / name
        return RunPaths(storage, name, local)

    if cfg.run.resume and names:
        newest = names[0]
        if fs.get_file_info(f"{base}/{newest}/{ckpt.COMPLETED}").type == pafs.FileType.NotFound:
            return paths(newest), True
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name, suffix = stamp, 1
    while name in names:
        name, suffix = f"{stamp}-{suffix}", suffix + 1
    return paths(name), False


def _upload(run: RunPaths) -> None:
    """A URI run: copy what the driver wrote locally next to the checkpoints."""
    import pyarrow.fs as pafs

    fs, base = _filesystem(run.storage)
    pafs.copy_files(str(run.local_dir), f"{base}/{run.name}", destination_filesystem=fs)


def build_tokenizer(cfg: FizzbotConfig, data: TrainingData, run_dir: Path):
    """The run's tokenizer, saved in the run folder; a resumed run reuses it (a retrained BPE would differ)."""
    from transformers import AutoTokenizer

    from fizzbot.model.tokenizer import add_chat_tokens, check_chat_tokens, train_tiny_tokenizer

    saved = run_dir / "tokenizer"
    speaker_tokens = data.speaker_map.tokens
    if (saved / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(saved)
        check_chat_tokens(tokenizer, speaker_tokens)
        return tokenizer
    if cfg.model.base == "tiny" and cfg.model.tokenizer is None:
        tokenizer = train_tiny_tokenizer(_tokenizer_texts(data.train_path), cfg.model.tiny.vocab_size)
    else:
        source = cfg.model.tokenizer or cfg.model.base
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.model.trust_remote_code)
        except OSError as exc:
            raise FileNotFoundError(f"tokenizer {source!r} cannot be loaded: {exc}") from None
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
    started = time.perf_counter()
    if use_ray:
        from fizzbot.ray_utils import ensure_ray

        ensure_ray()
    elif is_remote(cfg.run.dir):
        raise ConfigError(f"run.dir={cfg.run.dir} is a URI: that needs Ray Train's storage (drop --no-ray)")
    check_environment(cfg, use_ray)
    if not is_remote(cfg.run.dir):  # never write into (or resume from) a folder fizzbot did not make
        claim_folder(Path(cfg.run.dir) / cfg.run.name, key="run.dir", written_by="fizzbot train")
    run, resuming = choose_run_dir(cfg)
    run_dir = run.local_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    data = resolve_data(cfg, run_dir)
    # Rows are checked in the driver before anything reads them (the tiny BPE is trained on the
    # targets), so a row without a target is refused by file and line before any worker starts.
    from fizzbot.train.data import read_rows

    for path in (data.train_path, data.val_path):
        read_rows(path)
    _log(f"{'resuming' if resuming else 'starting'} run {run.storage}/{run.name}")
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())

    tokenizer = build_tokenizer(cfg, data, run_dir)
    speaker_ids = tokenizer.convert_tokens_to_ids(data.speaker_map.tokens)
    chat_ids = speaker_ids + [tokenizer.convert_tokens_to_ids("<EOT>")]
    from fizzbot.train.loop import JobSpec

    job = JobSpec(
        run_dir=f"{run.storage}/{run.name}",
        metrics_dir=str(run_dir),
        base=cfg.model.base,
        tokenizer=tokenizer,
        speaker_map=data.speaker_map.to_json(),
        chat_token_ids=chat_ids,
        speaker_token_ids=speaker_ids,
        config_yaml=cfg.to_yaml(),
    )
    if use_ray:
        final = _fit_with_ray(cfg, job, data, run)
    else:
        final = _fit_locally(cfg, job, data, run_dir)

    metrics = _read_metrics(run_dir)
    try:
        from fizzbot.train.plots import draw_loss_curves

        draw_loss_curves(metrics, run_dir / "loss_curves.png")
    except Exception as exc:  # a missing plot must not fail a finished run
        _log(f"loss curve plot skipped: {exc}")
    atomic_write_text(run_dir / ckpt.COMPLETED, json.dumps({"final_step": final, "finished": dt.datetime.now().isoformat()}) + "\n")
    if run.remote:
        _upload(run)
    best = ckpt.best_checkpoint(run_dir)
    found = ckpt.checkpoints_of(run_dir)
    seconds = time.perf_counter() - started
    last_eval = next((m for m in reversed(metrics) if m.get("kind") == "eval"), {})
    _log(f"done in {seconds:.0f}s: step {final}, best checkpoint {best}")
    return TrainResult(run_dir, best, found[-1][1] if found else None, final, last_eval, seconds)


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

    t = cfg.training
    datasets = {
        name: tokenized_dataset(str(path), job.tokenizer, t.max_seq_len, job.speaker_token_ids)
        for name, path in (("train", data.train_path), ("val", data.val_path))
    }
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
            storage_path=run.storage,
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
