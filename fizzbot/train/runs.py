"""Run folders: where a run lives, and whether a new command resumes the last one.

    <run.dir>/<run.name>/<timestamp>/     a local folder, or under a URI (s3://bucket/runs/...)
        config.yaml, fizzbot_run.json, tokenizer/, metrics.jsonl, checkpoint-<step>/, COMPLETED

`fizzbot_run.json`, written when a run starts, records what its checkpoints depend on: the
training settings that change what a step computes (`training_signature`), the data's fingerprint
(rows and speaker map) and the base tokenizer's size. With `run.resume=auto` the same command
resumes the newest unfinished run only when all of that matches; otherwise it starts a new run and
says why in one line. `force` resumes whatever changed (except a speaker map that gives the tokens
to other people: that is refused, whatever the mode); `never` always starts anew.

A URI run keeps what the driver writes (config, tokenizer, metrics) in a local mirror under the
cache, and copies it next to the checkpoints when the run starts and when it ends.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from fizzbot.artifacts import checkpoint as ckpt
from fizzbot.artifacts import storage
from fizzbot.chat.speakers import SpeakerMap
from fizzbot.config import ConfigError, FizzbotConfig

RUN_RECORD = "fizzbot_run.json"
TOKENIZER_DIR = "tokenizer"

# Settings that do not change what a training step computes: a run may resume with other values.
# Everything else under model.* and training.* does; data.* is covered by the data's fingerprint.
OPERATIONAL_KEYS = frozenset({
    "training.max_failures", "training.eval_steps", "training.eval_max_batches", "training.save_steps",
    "training.log_steps", "training.keep_checkpoints", "training.cpus_per_worker", "training.threads_per_worker",
    "training.wait_for_gpus", "training.compile", "training.fused_kernels",
    "model.gradient_checkpointing", "model.attn_implementation", "model.trust_remote_code",
})


def _log(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)


@dataclass
class RunPaths:
    """Where a run lives: `storage` (a local folder or a URI, Ray Train's storage_path) / `name`.

    `local_dir` holds what the driver writes during the run (config, tokenizer, metrics); for a
    local run.dir it is the run folder itself, for a URI a local mirror copied up at start and end.
    """

    storage: str
    name: str
    local_dir: Path

    @property
    def remote(self) -> bool:
        return storage.is_uri(self.storage)

    @property
    def location(self) -> str | Path:
        """The run folder itself: a local Path, or a URI."""
        return storage.join(self.storage, self.name) if self.remote else self.local_dir


def runs_root(cfg: FizzbotConfig) -> str:
    """`<run.dir>/<run.name>`: a URI, or a resolved local path."""
    if storage.is_uri(cfg.run.dir):
        return f"{cfg.run.dir.rstrip('/')}/{cfg.run.name}"
    return str((Path(cfg.run.dir) / cfg.run.name).resolve())


def _paths(root: str, name: str) -> RunPaths:
    if storage.is_uri(root):
        return RunPaths(root, name, storage.cache_dir("runs", f"{root}/{name}"))
    return RunPaths(root, name, Path(root) / name)


# --- what a run's checkpoints depend on -------------------------------------------------------------


def training_signature(cfg: FizzbotConfig) -> dict:
    """The model.* and training.* settings that change what a step computes, flattened."""
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}", sub)
        elif prefix not in OPERATIONAL_KEYS:
            flat[prefix] = value

    tree = cfg.model_dump(mode="json")
    for section in ("model", "training"):
        walk(section, tree[section])
    return flat


def run_record(cfg: FizzbotConfig, fingerprint: str, speaker_map: SpeakerMap, base_tokens: int | None) -> dict:
    return {
        "training": training_signature(cfg),
        "data_fingerprint": fingerprint,
        "speaker_map": speaker_map.to_json(),
        "base_tokens": base_tokens,
    }


def _describe(values: list[str], limit: int = 3) -> str:
    shown = "; ".join(values[:limit])
    return shown + (f"; and {len(values) - limit} more" if len(values) > limit else "")


def resume_mismatch(record: dict | None, wanted: dict) -> str | None:
    """Why a run recorded as `record` cannot be resumed by a command that wants `wanted`; None: it can."""
    if record is None:
        return f"it has no {RUN_RECORD} (it started before it could write one, or with an older fizzbot)"
    reasons = []
    old, new = record.get("training", {}), wanted["training"]
    changed = [f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    if changed:
        reasons.append(_describe(changed))
    if record.get("data_fingerprint") != wanted["data_fingerprint"]:
        speakers = (
            SpeakerMap.from_json(record["speaker_map"]).diff(SpeakerMap.from_json(wanted["speaker_map"]), "in the run", "in the data")
            if record.get("speaker_map") else None
        )
        reasons.append(f"the speaker map changed ({speakers})" if speakers else "the training data changed")
    if record.get("base_tokens") != wanted["base_tokens"]:
        reasons.append(f"the base tokenizer changed ({record.get('base_tokens')} -> {wanted['base_tokens']} tokens)")
    return "; ".join(reasons) or None


def check_speaker_map(label: str, saved: dict, data_map: SpeakerMap, *, grown: bool = False) -> None:
    """Refuse to continue training weights whose speaker tokens stand for other people in this data
    (with `grown`, the data's map may add people: a stable map grown from the saved one)."""
    changes = SpeakerMap.from_json(saved).diff(data_map, f"for {label}", "in data.path", grown=grown)
    if changes:
        raise ConfigError(
            f"{label} was trained with another speaker map than data.path's ({changes}): its speaker tokens "
            "would stand for other people. Train on the data it was trained on, or start a new run "
            "(run.resume=never) from a base model"
        )


def check_base_speaker_map(cfg: FizzbotConfig, data_map: SpeakerMap) -> None:
    """A fizzbot checkpoint as model.base (continuing its training) must agree with the data's speaker map."""
    base = cfg.model.base
    if storage.is_uri(base) or not (Path(base) / ckpt.SPEAKER_MAP).is_file():
        return
    # Continuing a checkpoint on new data: people may have joined (appended tokens), none may move.
    check_speaker_map(f"model.base={base}", json.loads((Path(base) / ckpt.SPEAKER_MAP).read_text()), data_map, grown=True)


# --- choosing the run -------------------------------------------------------------------------------


def read_record(location: str | Path) -> dict | None:
    try:
        return json.loads(storage.read_text(storage.join(location, RUN_RECORD)))
    except (OSError, FileNotFoundError, json.JSONDecodeError):
        return None


def choose_run(cfg: FizzbotConfig, wanted: dict) -> tuple[RunPaths, bool]:
    """(the run, whether it resumes): the newest unfinished run of run.name when run.resume allows it,
    else a new timestamped folder. Prints why an unfinished run is not resumed."""
    root = runs_root(cfg)
    names = [n for n in storage.list_dirs(root) if not n.startswith(".")]
    newest = max(names) if names else None
    if newest is not None and cfg.run.resume != "never":
        candidate = _paths(root, newest)
        if not storage.exists(storage.join(candidate.location, ckpt.COMPLETED)):
            record = read_record(candidate.location)
            if record is not None and record.get("speaker_map") and record.get("data_fingerprint") != wanted["data_fingerprint"]:
                if cfg.run.resume == "force":
                    check_speaker_map(f"run {candidate.location}", record["speaker_map"], SpeakerMap.from_json(wanted["speaker_map"]))
            why = resume_mismatch(record, wanted)
            if why is None or cfg.run.resume == "force":
                if why is not None:
                    _log(f"run.resume=force: resuming {candidate.location} although {why}")
                return candidate, True
            _log(f"not resuming {candidate.location}: {why}; starting a new run (run.resume=force resumes it anyway)")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name, suffix = stamp, 1
    while name in names:
        name, suffix = f"{stamp}-{suffix}", suffix + 1
    return _paths(root, name), False


# --- the mirror of a URI run ------------------------------------------------------------------------


def pull_driver_files(run: RunPaths) -> None:
    """Resuming a URI run on a machine without its mirror: fetch the tokenizer (a retrained tiny BPE
    would differ) and the metrics so far (from the latest checkpoint, which carries them)."""
    if not run.remote:
        return
    tokenizer = run.local_dir / TOKENIZER_DIR
    remote_tokenizer = storage.join(run.location, TOKENIZER_DIR)
    if not (tokenizer / "tokenizer_config.json").is_file() and storage.is_dir(remote_tokenizer):
        storage.download(remote_tokenizer, tokenizer)
    metrics = run.local_dir / "metrics.jsonl"
    found = ckpt.checkpoints_of(run.location)
    if not metrics.is_file() and found:
        latest = found[-1][1]
        if storage.is_file(storage.join(latest, "metrics.jsonl")):
            metrics.write_bytes(storage.read_bytes(storage.join(latest, "metrics.jsonl")))


def push_driver_files(run: RunPaths) -> None:
    """A URI run: copy what the driver wrote locally next to the checkpoints."""
    if run.remote:
        storage.upload_dir(run.local_dir, run.location)
