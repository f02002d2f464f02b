"""The per-worker training loop: plain PyTorch in named steps, run by Ray Train or in one process.

    setup_model_and_optimizer -> load_checkpoint -> [train_step ... evaluate ... save_checkpoint]

Tokens per optimizer step = workers x grad_accum_steps x (rows per micro-batch x their length).
The loss of a step is the sum of target-token losses over all its micro-batches on all workers,
divided by the number of target tokens in them (counted before the first backward pass), so batch
8 x accumulation 1 and batch 4 x accumulation 2 take the same step. The `Session` is the only
thing that differs between Ray Train and a plain process: ranks, reporting, checkpoint storage.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from fizzbot.config import FizzbotConfig
from fizzbot.artifacts import checkpoint as ckpt
from fizzbot.chat.speakers import SpeakerMap
from fizzbot.eval import measures
from fizzbot.train.data import BatchPlan, TokenizedRows, collate, collate_packed, context_free_start, plan_epoch, plan_evaluation
from fizzbot.train.objective import TargetOnlyLM, score_rows


@dataclass
class JobSpec:
    """What the driver hands every worker, besides the datasets."""

    run_dir: str  # <run.dir>/<run.name>/<timestamp> (a local path or a URI)
    metrics_dir: str | None  # where rank 0 writes metrics.jsonl and TensorBoard events (local runs)
    base: str  # hub id or folder; "tiny" builds the built-in model
    tokenizer: object  # a transformers tokenizer with the chat tokens
    speaker_map: dict  # speaker_map.json contents
    chat_token_ids: list[int]
    speaker_token_ids: list[int]
    config_yaml: str
    base_tokens: int | None = None  # the base tokenizer's size; ids past it are fizzbot's chat tokens (None: tiny)
    data_fingerprint: str = ""  # of the train and val rows and the speaker map (fizzbot.train.inputs)


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batches_done: int = 0  # global micro-batches consumed in this epoch
    best_val_loss: float | None = None
    tokens_seen: int = 0


@dataclass
class ValidationSet:
    """The validation rows, the same targets with their context removed, and what the model is
    compared with on them (fizzbot.eval.measures: speaker and token baselines, fitted on training)."""

    rows: TokenizedRows
    bare: TokenizedRows
    references: measures.References

    @classmethod
    def build(cls, train_rows: TokenizedRows, val_rows: TokenizedRows, job: "JobSpec") -> "ValidationSet":
        columns = measures.SpeakerColumns.of(SpeakerMap.from_json(job.speaker_map), job.speaker_token_ids)
        references = measures.References.build(train_rows, val_rows, columns, len(job.tokenizer))
        return cls(val_rows, val_rows.without_context(context_free_start(job.tokenizer)), references)


# --- the session: the Ray Train or plain-process side of the loop ---------------------------------


class Session:
    rank = 0
    world = 1

    def device(self, use_gpu: bool) -> torch.device:
        return torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")

    def rows(self, name: str) -> TokenizedRows:
        raise NotImplementedError

    def latest_checkpoint(self):
        """A context manager yielding the folder to resume from, or None."""
        return contextlib.nullcontext(None)

    def report(self, metrics: dict, folder: Path | None, name: str) -> None:
        raise NotImplementedError

    def progress(self, total: int, initial: int):
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc="train", unit="step", disable=self.rank != 0, dynamic_ncols=True)


class RaySession(Session):
    def __init__(self, run_location: str | None = None) -> None:
        import ray.train

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world = context.get_world_size()
        self.run_location = run_location

    def device(self, use_gpu: bool) -> torch.device:
        if use_gpu:
            import ray.train.torch

            device = ray.train.torch.get_device()
            torch.cuda.set_device(device)
            return device
        return torch.device("cpu")

    def rows(self, name: str) -> TokenizedRows:
        import ray.train

        from ray.data import DataContext

        # The rows are read once at start-up; a progress bar per worker per dataset is only noise.
        DataContext.get_current().enable_progress_bars = False
        shard = ray.train.get_dataset_shard(name)
        parts = [batch["rows"] for batch in shard.iter_batches(batch_size=64, batch_format="numpy")]
        from fizzbot.train.tokenize import unpack_rows

        return unpack_rows([p for chunk in parts for p in chunk])

    def latest_checkpoint(self):
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            return checkpoint.as_directory()
        # A command killed after a checkpoint was written but before Ray Train recorded it in its
        # snapshot: the newest complete checkpoint in the run folder (by its manifest) still counts.
        found = ckpt.checkpoints_of(self.run_location) if self.run_location else []
        return contextlib.nullcontext(ckpt.fetch_checkpoint(found[-1][1]) if found else None)

    def report(self, metrics: dict, folder: Path | None, name: str) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder is not None else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name if checkpoint else None)

    def progress(self, total: int, initial: int):
        if self.rank != 0:
            return _NoProgress()
        from ray.experimental.tqdm_ray import tqdm

        bar = tqdm(total=total, desc="train", unit="step")
        bar.update(initial)
        return bar


class LocalSession(Session):
    """One process, no Ray: checkpoints go straight into the run folder, best N kept by val loss."""

    def __init__(self, run_dir: str, rows: dict[str, TokenizedRows], keep: int):
        self.run_dir = Path(run_dir)
        self._rows = rows
        self.keep = keep

    def rows(self, name: str) -> TokenizedRows:
        return self._rows[name]

    def latest_checkpoint(self):
        found = ckpt.checkpoints_of(self.run_dir)
        return contextlib.nullcontext(found[-1][1] if found else None)

    def report(self, metrics: dict, folder: Path | None, name: str) -> None:
        if folder is None:
            return
        target = self.run_dir / name
        partial = self.run_dir / f".{name}.partial-local"
        # A process killed while copying leaves `partial` behind; the resumed run saves this step again.
        shutil.rmtree(partial, ignore_errors=True)
        if target.exists():
            shutil.rmtree(target)
        try:
            shutil.copytree(folder, partial)
        except BaseException:
            # A full disk, say: nothing half-copied is left to take the space (earlier checkpoints stay).
            shutil.rmtree(partial, ignore_errors=True)
            raise
        os.replace(partial, target)
        ckpt.prune(self.run_dir, self.keep)


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


# --- metrics -----------------------------------------------------------------------------------------


class MetricsLog:
    """metrics.jsonl and TensorBoard events, written by rank 0 only."""

    def __init__(self, folder: str | None, enabled: bool):
        self.enabled = enabled and folder is not None
        self.path = Path(folder) / "metrics.jsonl" if self.enabled else None
        self.writer = None
        if self.enabled:
            Path(folder).mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(Path(folder) / "tensorboard"))
            except ImportError:  # tensorboard is a dependency; a stripped install still trains
                self.writer = None

    def log(self, step: int, kind: str, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, "time": round(time.time(), 3), **values}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --- named steps -------------------------------------------------------------------------------------


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_model(cfg: FizzbotConfig, job: JobSpec, device: torch.device, workdir: Path):
    from fizzbot.model.build import TINY, create_tiny_base, prepare_model

    base = job.base
    if base == TINY:
        # Every worker builds the same initial weights from the seed: no file has to travel.
        base = str(create_tiny_base(cfg.model, job.tokenizer, workdir / "tiny-base", cfg.training.seed))
    names = {s["token"]: s["username"] for s in job.speaker_map.get("speakers", [])}
    model = prepare_model(cfg.model, base, job.tokenizer, device, names, job.chat_token_ids, cfg.model.gradient_checkpointing,
                          base_tokens=job.base_tokens, fused_kernels=cfg.training.fused_kernels)
    return model, base


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def setup_optimizer(cfg: FizzbotConfig, model, device: torch.device):
    t = cfg.training
    params = trainable_parameters(model)
    embedding_lr = t.embedding_learning_rate or t.learning_rate
    token_rows = [p for n, p in model.named_parameters() if p.requires_grad and "trainable_tokens" in n]
    other = [p for p in params if all(p is not q for q in token_rows)]
    groups = [{"params": other, "lr": t.learning_rate}]
    if token_rows:
        groups.append({"params": token_rows, "lr": embedding_lr, "weight_decay": 0.0})
    kwargs = {"betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": t.weight_decay}
    if device.type == "cuda":
        kwargs["fused"] = True
    optimizer = torch.optim.AdamW(groups, **kwargs)

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / max(1, t.warmup_steps)
        if t.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
        if t.lr_schedule == "linear":
            return max(0.0, 1.0 - progress) * 0.9 + 0.1
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return optimizer, scheduler


def model_state_for_save(model) -> dict:
    """Weights that a checkpoint stores: the adapter (and chat-token rows) under peft, else all."""
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    return model.state_dict()


def save_checkpoint(folder: Path, cfg: FizzbotConfig, job: JobSpec, model, optimizer, scheduler, state: TrainState, session: Session, metrics: dict, base_folder: str | None) -> None:
    """Write this worker's part of a checkpoint into `folder` (rank 0 writes the model; the manifest
    comes later, from `finish_checkpoint`, once every worker's files exist)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    torch.save(rng, folder / f"rng-rank{session.rank}.pt")
    if session.rank != 0:
        return
    if hasattr(model, "peft_config"):
        # The adapter and the trained chat-token rows only: the base is rebuilt at load time from the
        # sizes in the manifest (fit_embeddings), never copied into every checkpoint.
        model.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)
    else:
        model.save_pretrained(folder, safe_serialization=True)
    job.tokenizer.save_pretrained(folder)
    (folder / ckpt.SPEAKER_MAP).write_text(json.dumps(job.speaker_map, indent=2, ensure_ascii=False) + "\n")
    (folder / ckpt.CONFIG_FILE).write_text(job.config_yaml)
    if hasattr(model, "peft_config") and base_folder is not None and job.base == "tiny":
        # The built-in base exists nowhere else: an adapter checkpoint carries it (a few MB).
        ckpt.copy_tree(Path(base_folder), folder / ckpt.BASE_DIR)
    torch.save(
        {
            # Under DeepSpeed the optimizer state is sharded: each rank saves its shard (DeepSpeedStepper.save).
            "optimizer": None if cfg.training.deepspeed else optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": asdict(state),
            "world": session.world,
        },
        folder / ckpt.TRAINING_STATE,
    )
    if job.metrics_dir and (Path(job.metrics_dir) / "metrics.jsonl").exists():
        shutil.copy(Path(job.metrics_dir) / "metrics.jsonl", folder / "metrics.jsonl")


def finish_checkpoint(folder: Path, cfg: FizzbotConfig, job: JobSpec, model, state: TrainState, session: Session, metrics: dict) -> None:
    """The manifest, written last by rank 0, listing every worker's files (gathered from all ranks
    after each has written its part, DeepSpeed shards included)."""
    parts = _gather_objects(ckpt.checkpoint_files(folder))
    if session.rank != 0:
        return
    info = {
        "step": state.step,
        "epoch": state.epoch,
        "method": cfg.model.method,
        "base": job.base,
        "val_loss": metrics.get("val_loss"),
        "speaker_acc": metrics.get("speaker_acc"),
        "world": session.world,
        # What inference needs to rebuild the base this adapter was trained on, row for row.
        "embedding_rows": int(model.get_input_embeddings().weight.shape[0]),
        "base_tokens": job.base_tokens,
        "data_fingerprint": job.data_fingerprint,
    }
    ckpt.write_manifest(folder, info, ckpt.merge_rank_files(parts))


def _gather_objects(value) -> list:
    """[value of rank 0, value of rank 1, ...] on every rank (just [value] in one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def configured_hyperparameters(optimizer, scheduler) -> tuple[list[dict], list[float]]:
    """The optimizer's settings as the config made them (all but the parameters), and the schedule's base rates."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return groups, list(scheduler.base_lrs)


def apply_hyperparameters(optimizer, scheduler, configured: tuple[list[dict], list[float]]) -> None:
    """After loading a checkpoint: the config's learning rates, weight decay and betas, not the saved ones
    (a resumed run with the same settings is unchanged; `run.resume=force` takes the new ones)."""
    groups, base_lrs = configured
    scheduler.base_lrs = list(base_lrs)
    for group, settings, base, factor in zip(optimizer.param_groups, groups, base_lrs, scheduler.lr_lambdas):
        group.update({k: v for k, v in settings.items() if k not in ("lr", "initial_lr")})
        group["initial_lr"] = base
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def load_checkpoint(folder: Path, model, optimizer, scheduler, session: Session, seed: int = 0) -> TrainState:
    """Restore weights, optimizer, scheduler, data position and this rank's RNG from a checkpoint."""
    from safetensors.torch import load_file

    if not ckpt.is_complete(folder):
        raise RuntimeError(f"checkpoint {folder} is incomplete: its manifest is missing or lists files that are not there")
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    else:
        weights = load_file(str(folder / "model.safetensors"))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        tied = {k for k in missing if "lm_head" in k}
        if unexpected or set(missing) - tied:
            raise RuntimeError(f"checkpoint {folder} does not match the model: missing {missing}, unexpected {unexpected}")
    configured = configured_hyperparameters(optimizer, scheduler)
    saved = torch.load(folder / ckpt.TRAINING_STATE, map_location="cpu", weights_only=False)
    if saved["optimizer"] is not None:
        optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    apply_hyperparameters(optimizer, scheduler, configured)
    state = TrainState(**saved["state"])
    rng_file = folder / f"rng-rank{session.rank}.pt"
    saved_world = saved.get("world", session.world)
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    elif session.rank < saved_world:
        raise RuntimeError(f"checkpoint {folder} has no {rng_file.name} although {saved_world} workers saved it: it is incomplete")
    else:
        # More workers than saved the checkpoint: this one never had a stream; say so, and derive one.
        print(f"[train] rank {session.rank}: checkpoint {folder.name} was saved by {saved_world} workers; "
              "this worker starts a fresh RNG stream", file=sys.stderr, flush=True)
        set_seed(seed + 1_000_003 * state.step + session.rank)
    return state


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def evaluation_batches(rows: TokenizedRows, cfg: FizzbotConfig, session: Session) -> list[np.ndarray]:
    """This worker's validation batches: a fixed sample spanning all lengths (`plan_evaluation`)."""
    t = cfg.training
    key = (hash(rows.lengths().tobytes()), len(rows), t.batch_size, t.max_tokens_per_batch, t.eval_max_batches, t.seed, session.world)
    if key not in _EVAL_PLANS:
        _EVAL_PLANS.clear()  # one validation set per process
        _EVAL_PLANS[key] = plan_evaluation(rows.lengths(), t.batch_size, t.max_tokens_per_batch, t.eval_max_batches, t.seed, session.world)
    return _EVAL_PLANS[key][session.rank :: session.world]


_EVAL_PLANS: dict = {}


@torch.no_grad()
def evaluate(objective: TargetOnlyLM, validation: ValidationSet, cfg: FizzbotConfig, session: Session, device: torch.device, pad_id: int, speaker_ids: torch.Tensor) -> dict:
    """The measures of fizzbot.eval.measures over this worker's share of the validation sample
    (`evaluation_batches`), summed over all workers: loss and its baselines, context gain, who speaks next."""
    batches = evaluation_batches(validation.rows, cfg, session)
    scores = score_rows(objective, validation.rows, batches, pad_id, speaker_ids, device)
    bare = score_rows(objective, validation.bare, batches, pad_id, speaker_ids, device)
    speakers = len(validation.references.columns)
    tally = measures.Tally(speakers)
    tally.add(scores.rows, validation.references, scores.loss, scores.tokens, bare.loss, bare.tokens, scores.speaker_logits)
    tally = measures.Tally.from_vector(speakers, _all_reduce(tally.vector(), device))
    return tally.figures(validation.references.columns)


# --- optimizer steps: plain PyTorch (one process or DDP), or DeepSpeed ZeRO -------------------------------


def _inputs(batch, device: torch.device) -> tuple:
    """The objective's arguments for a batch (padded: an attention mask; packed: position ids)."""
    def to(t):
        return None if t is None else t.to(device, non_blocking=True)

    return to(batch.input_ids), to(batch.attention_mask), to(batch.labels), to(batch.position_ids)


class TorchStepper:
    """Backward and step for one process or DDP (which averages gradients over workers)."""

    def __init__(self, cfg: FizzbotConfig, objective, model, optimizer, scheduler, distributed: bool, device: torch.device):
        self.cfg, self.model, self.optimizer, self.scheduler = cfg, model, optimizer, scheduler
        self.module = objective
        if cfg.training.compile:
            # Row lengths vary batch to batch: one graph with a dynamic sequence length, not a recompile each.
            self.module = torch.compile(self.module, dynamic=True)
        if distributed:
            self.module = torch.nn.parallel.DistributedDataParallel(
                self.module, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.distributed = distributed

    def backward(self, batch, device: torch.device, scale: float, last: bool) -> torch.Tensor:
        # Gradients are all-reduced once per optimizer step, on the last micro-batch.
        sync = contextlib.nullcontext() if (last or not self.distributed) else self.module.no_sync()
        with sync:
            loss = self.module(*_inputs(batch, device))
            (loss * scale).backward()
        return loss.detach()

    def step(self) -> float:
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable_parameters(self.model), self.cfg.training.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def save(self, folder: Path) -> None:
        pass  # optimizer and scheduler are in training_state.pt

    def load(self, folder: Path) -> None:
        pass


class DeepSpeedStepper(TorchStepper):
    """DeepSpeed ZeRO: optimizer state (and at stage 2, gradients) sharded across the GPU workers."""

    def __init__(self, cfg: FizzbotConfig, objective, model, optimizer, scheduler, distributed: bool, device: torch.device):
        import deepspeed

        self.cfg, self.model, self.scheduler = cfg, model, scheduler
        t = cfg.training
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        ds_config = {
            "train_micro_batch_size_per_gpu": t.batch_size,
            "gradient_accumulation_steps": t.grad_accum_steps,
            "gradient_clipping": t.max_grad_norm,
            "zero_optimization": {"stage": t.zero_stage, "overlap_comm": True, "contiguous_gradients": True},
            "bf16": {"enabled": dtype == torch.bfloat16},
            "steps_per_print": 10**9,
        }
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=objective, optimizer=optimizer, config=ds_config, dist_init_required=False
        )
        self.module = self.engine

    def backward(self, batch, device: torch.device, scale: float, last: bool) -> torch.Tensor:
        loss = self.engine(*_inputs(batch, device))
        # DeepSpeed divides by the accumulation steps itself; our scale already normalises per step.
        self.engine.backward(loss * scale * self.cfg.training.grad_accum_steps)
        self.engine.step()  # an optimizer step only at the accumulation boundary
        return loss.detach()

    def step(self) -> float:
        self.scheduler.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def save(self, folder: Path) -> None:
        # Every rank writes its own optimizer shard; Ray Train merges the workers' folders, and the
        # manifest (finish_checkpoint) lists every rank's files. Frozen base weights are not copied.
        self.engine.save_checkpoint(str(folder / "deepspeed"), tag="state", save_latest=False, exclude_frozen_parameters=True)

    def load(self, folder: Path) -> None:
        self.engine.load_checkpoint(str(folder / "deepspeed"), tag="state", load_module_strict=False)


# --- the loop ----------------------------------------------------------------------------------------


def _log_window() -> dict:
    """Sums over the steps since the last log line (this worker's; all-reduced when logged)."""
    return {"loss": 0.0, "real": 0, "padded": 0, "targets": 0, "time": time.perf_counter(), "steps": 0}


def run_training(cfg: FizzbotConfig, job: JobSpec, session: Session) -> TrainState:
    t = cfg.training
    device = session.device(t.use_gpu)
    if device.type == "cpu":
        # The cores this process may use (a container's CPU set, not the host's), shared by the
        # workers: oversubscribed OpenMP threads wait on each other and run many times slower.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = t.threads_per_worker or max(1, cores // t.num_workers)
        torch.set_num_threads(threads)
    set_seed(t.seed + session.rank)
    workdir = Path(tempfile.mkdtemp(prefix="fizzbot-worker-"))
    try:
        return _train(cfg, job, session, device, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _train(cfg: FizzbotConfig, job: JobSpec, session: Session, device: torch.device, workdir: Path) -> TrainState:
    t = cfg.training
    train_rows = session.rows("train").ordered_by_content()
    val_rows = session.rows("val").ordered_by_content()
    tokenizer = job.tokenizer
    pad_id = tokenizer.pad_token_id
    speaker_ids = torch.tensor(job.speaker_token_ids, device=device)

    model, base_folder = build_model(cfg, job, device, workdir)
    optimizer, scheduler = setup_optimizer(cfg, model, device)
    state = TrainState()
    with session.latest_checkpoint() as folder:
        if folder is not None:
            state = load_checkpoint(Path(folder), model, optimizer, scheduler, session, t.seed)
            saved_data = (ckpt.read_manifest(folder) or {}).get("data_fingerprint")
            if saved_data != job.data_fingerprint and state.batches_done:
                # run.resume=force onto other data: the saved position indexes another row order.
                if session.rank == 0:
                    print(f"[train] the data changed since checkpoint-{state.step}: epoch {state.epoch} restarts "
                          "from its first batch", file=sys.stderr, flush=True)
                state.batches_done = 0
    resumed_from = state.step

    fused_loss = None
    if t.fused_kernels:
        from fizzbot.model.kernels import fused_linear_cross_entropy

        fused_loss = fused_linear_cross_entropy(device)
    objective = TargetOnlyLM(model, chunked=t.chunked_loss, fused_loss=fused_loss)
    distributed = dist.is_available() and dist.is_initialized() and session.world > 1
    stepper = (DeepSpeedStepper if t.deepspeed else TorchStepper)(cfg, objective, model, optimizer, scheduler, distributed, device)
    if t.deepspeed and state.step > 0:
        configured = configured_hyperparameters(optimizer, scheduler)
        with session.latest_checkpoint() as folder:
            stepper.load(Path(folder))
        apply_hyperparameters(optimizer, scheduler, configured)

    metrics_log = MetricsLog(job.metrics_dir, session.rank == 0)
    validation = ValidationSet.build(train_rows, val_rows, job)
    plan = BatchPlan(t.batch_size, t.max_tokens_per_batch, t.bucket_size_multiplier, t.batching == "bucket", t.seed,
                     pack_length=t.pack_length if t.packing else None)
    lengths = train_rows.lengths()
    per_step = session.world * t.grad_accum_steps
    epoch_batches = plan_epoch(lengths, plan, state.epoch)
    if len(epoch_batches) < per_step:
        raise ValueError(
            f"{len(train_rows)} training rows make {len(epoch_batches)} batches, fewer than one optimizer step needs "
            f"({session.world} workers x {t.grad_accum_steps} accumulation); lower training.batch_size"
        )
    if session.rank == 0:
        trainable = sum(p.numel() for p in trainable_parameters(model))
        total = sum(p.numel() for p in model.parameters())
        metrics_log.log(state.step, "start", {
            "resumed_from_step": resumed_from, "workers": session.world, "train_rows": len(train_rows),
            "val_rows": len(val_rows), "trainable_params": trainable, "total_params": total,
            "truncated_rows": train_rows.truncated, **validation.references.start_figures(),
        })
        print(f"[train] rank 0: {trainable:,} of {total:,} parameters trainable; resuming at step {resumed_from}", file=sys.stderr, flush=True)

    progress = session.progress(t.max_steps, state.step)
    window = _log_window()
    last_eval: dict | None = None
    last_eval_step = -1
    # training.max_minutes: the workers agree on the clock through the all-reduce every step
    # already makes, so they all stop after the same step.
    deadline = time.monotonic() + 60 * t.max_minutes if t.max_minutes else None
    final = state.step >= t.max_steps
    while not final:
        if state.batches_done + per_step > len(epoch_batches):
            state.epoch += 1
            state.batches_done = 0
            epoch_batches = plan_epoch(lengths, plan, state.epoch)
        start = state.batches_done + session.rank
        mine = [epoch_batches[start + k * session.world] for k in range(t.grad_accum_steps)]
        if t.packing:
            batches = [collate_packed(train_rows, indices, pad_id, t.pack_length, t.train_on_context) for indices in mine]
        else:
            batches = [collate(train_rows, indices, pad_id, multiple_of=64 if t.compile else 1, train_on_context=t.train_on_context)
                       for indices in mine]
        local_targets = sum(b.target_tokens for b in batches)
        out_of_time = float(deadline is not None and time.monotonic() >= deadline)
        global_targets, out_of_time = _all_reduce([float(local_targets), out_of_time], device)
        scale = session.world / max(global_targets, 1.0)  # DDP averages over workers; undo that

        step_loss = 0.0
        for i, b in enumerate(batches):
            loss = stepper.backward(b, device, scale, last=i == len(batches) - 1)
            step_loss += float(loss)
        grad_norm = stepper.step()
        state.step += 1
        state.batches_done += per_step
        real = sum(b.real_tokens for b in batches)
        state.tokens_seen += real * session.world
        window["loss"] += step_loss
        window["targets"] += local_targets
        window["real"] += real
        window["padded"] += sum(b.padded_tokens for b in batches)
        window["steps"] += 1
        progress.update(1)

        final = state.step >= t.max_steps or out_of_time > 0
        if state.step % t.log_steps == 0 or final:
            loss_sum, targets, real_all, padded_all = _all_reduce([window["loss"], window["targets"], window["real"], window["padded"]], device)
            elapsed = time.perf_counter() - window["time"]
            values = {
                "loss": loss_sum / max(targets, 1),
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "tokens_per_s": real_all / max(elapsed, 1e-9),
                "padding_share": 1.0 - real_all / max(padded_all, 1),
                "epoch": state.epoch,
            }
            if session.rank == 0:
                metrics_log.log(state.step, "train", values)
                remaining = (t.max_steps - state.step) * elapsed / max(window["steps"], 1)
                print(
                    f"[train] step {state.step}/{t.max_steps} loss {values['loss']:.3f} "
                    f"{values['tokens_per_s']:,.0f} tok/s padding {values['padding_share']:.0%} ETA {remaining:,.0f}s",
                    file=sys.stderr, flush=True,
                )
            window = _log_window()

        saving = state.step % t.save_steps == 0 or final
        if state.step % t.eval_steps == 0 or saving:
            if last_eval_step != state.step:
                last_eval = evaluate(objective, validation, cfg, session, device, pad_id, speaker_ids)
                last_eval_step = state.step
                if session.rank == 0:
                    metrics_log.log(state.step, "eval", last_eval)
                    print(f"[train] step {state.step} {measures.summary_line(last_eval)}", file=sys.stderr, flush=True)
            if state.best_val_loss is None or last_eval["val_loss"] < state.best_val_loss:
                state.best_val_loss = last_eval["val_loss"]
        if saving:
            metrics = {"step": state.step, "epoch": state.epoch, **last_eval}
            name = f"checkpoint-{state.step}"
            folder = workdir / name
            save_checkpoint(folder, cfg, job, model, optimizer, scheduler, state, session, metrics, base_folder)
            stepper.save(folder)
            finish_checkpoint(folder, cfg, job, model, state, session, metrics)
            session.report(metrics, folder, name)
            shutil.rmtree(folder, ignore_errors=True)
    progress.close()
    metrics_log.close()
    return state


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point on every worker."""
    cfg = FizzbotConfig.model_validate(config["config"])
    run_training(cfg, config["job"], RaySession(config["job"].run_dir))
