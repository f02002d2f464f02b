"""`fizzbot update`: new exports -> a model that knows them, without starting over.

    fizzbot update (--latest | --model-dir CHECKPOINT) --input PATH [--input PATH ...] [key=value ...]

1. The new exports are prepared with the checkpoint's own data rules and its speaker map kept
   (`data.speaker_map`: every token keeps its person; new people are appended while the cap allows).
2. Examples the checkpoint was trained on (same channel, time and target) are dropped: overlapping
   exports teach nothing twice.
3. A replay share of the old training rows (`update.replay_share`) is mixed in, so that the model does
   not forget the channel's past while it learns its present.
4. A new run starts from the checkpoint's weights (a full model directly; an adapter merged into its
   base first, and a new adapter trained on top) with a short schedule (`update.*`), on Ray Train.
5. The old and the new checkpoint are scored on the new messages' validation rows and on the old
   validation rows (the old model sees a newcomer as its guest token, as it would when serving).
   The new one is promoted only if it is better on the new rows and not worse than
   `update.tolerance` on the old ones. The decision and the figures go to the new run's
   `fizzbot_update.json`; an unpromoted run is skipped by `--latest`.
6. With `update.serve_app`, promotion points that running Serve application at the new checkpoint
   (see `promote`), so the endpoint answers with the new model without a restart.

The command exits 0 whether or not it promotes.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fizzbot.artifacts import checkpoint as ckpt
from fizzbot.artifacts import prepared as layout
from fizzbot.artifacts import storage
from fizzbot.artifacts.io import atomic_directory, atomic_write_text, iter_jsonl
from fizzbot.chat.render import ANONYMOUS, with_name
from fizzbot.chat.speakers import SpeakerMap
from fizzbot.config import FizzbotConfig, load_config, replace
from fizzbot.errors import InputError

UPDATE_FILE = ckpt.UPDATE_FILE


def _log(message: str) -> None:
    print(f"[update] {message}", file=sys.stderr, flush=True)


@dataclass
class UpdateResult:
    run_dir: Path
    old_checkpoint: Path
    new_checkpoint: Path | None
    promoted: bool
    report: dict
    seconds: float


def row_key(row: dict) -> tuple:
    """What makes an example the same example: where and when its target was said, and what."""
    return (row.get("channel"), row.get("ts"), row.get("target"))


def _rows(path: Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)] if path.is_file() else []


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def checkpoint_config(model_dir: Path) -> FizzbotConfig:
    path = model_dir / ckpt.CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: no {ckpt.CONFIG_FILE} (is this a fizzbot checkpoint?)")
    return load_config(path)


def old_data(cfg: FizzbotConfig, old_cfg: FizzbotConfig, workdir: Path):
    """The checkpoint's training data (update.old_data, else the data.path it was trained on)."""
    from fizzbot.train.inputs import resolve_data

    where = cfg.update.old_data or old_cfg.data.path
    source = replace(old_cfg, f"data.path={where}", "data.val_jsonl=null")
    try:
        return resolve_data(source, workdir)
    except InputError as exc:
        raise InputError(
            f"the checkpoint's training data cannot be read ({exc}); pass update.old_data=PATH (the prepared folder it was trained on)",
            path=str(where), field="update.old_data",
        ) from None


def mix(new_dir: Path, old, out: Path, replay_share: float, seed: int) -> dict:
    """The update's training data: the new examples the checkpoint has not seen, and a replay sample
    of its own training rows; validation: the new examples' validation rows."""
    seen = {row_key(r) for path in (old.train_path, old.val_path) for r in _rows(path)}
    new_train, new_val = _rows(new_dir / layout.TRAIN_FILE), _rows(new_dir / layout.VAL_FILE)
    fresh_train = [r for r in new_train if row_key(r) not in seen]
    fresh_val = [r for r in new_val if row_key(r) not in seen]
    duplicates = len(new_train) + len(new_val) - len(fresh_train) - len(fresh_val)
    if not fresh_train:
        raise InputError("no new messages: every example of these inputs is already in the checkpoint's training data", path=str(new_dir))
    rng = random.Random(seed)
    old_train = _rows(old.train_path)
    replay = rng.sample(old_train, min(len(old_train), round(replay_share * len(fresh_train))))
    train = fresh_train + replay
    rng.shuffle(train)
    with atomic_directory(out) as staging:
        _write_rows(staging / layout.TRAIN_FILE, train)
        _write_rows(staging / layout.VAL_FILE, fresh_val)
        for name in (layout.SPEAKER_MAP, layout.STATS_FILE):
            shutil.copy2(new_dir / name, staging / name)  # the stable map; stats carry the context rules
        layout.mark_prepared(staging)
    return {"new_train": len(fresh_train), "new_val": len(fresh_val), "duplicates_skipped": duplicates, "replayed": len(replay)}


def continue_from(model_dir: Path, workdir: Path) -> tuple[str, str]:
    """(model.base, model.method) for a run that starts from this checkpoint's weights.

    A full checkpoint is a model folder itself. An adapter is merged into its base and the merged model
    saved beside the update (its new adapter needs that base at inference: keep the folder)."""
    if (model_dir / "adapter_config.json").is_file():
        import torch

        from fizzbot.artifacts.loading import load_for_inference

        merged = workdir / "merged-base"
        model, tokenizer, _ = load_for_inference(model_dir, device=torch.device("cpu"), dtype=torch.float32)
        model.save_pretrained(merged)
        tokenizer.save_pretrained(merged)
        # Its speaker map goes along: training checks that the new data keeps every token's person.
        shutil.copy2(model_dir / layout.SPEAKER_MAP, merged / layout.SPEAKER_MAP)
        config = checkpoint_config(model_dir)
        return str(merged), "lora" if config.model.method == "full" else config.model.method
    return str(model_dir), "full"


def as_seen_by(rows: list[dict], speaker_map: SpeakerMap, newer: SpeakerMap | None = None) -> list[dict]:
    """Rows as a model with this speaker map would be given them: tokens it does not know (people
    who arrived later, in `newer`) become its guest token, as its server would render them (named,
    where its others token is: data.name_others)."""
    known = set(speaker_map.tokens)
    guest = speaker_map.other_token
    names = newer.token_to_username() if newer is not None else {}

    def seen(match: re.Match) -> str:
        token = match.group(1)
        if token in known:
            return match.group(0)
        if guest is None:
            return "\0"
        return f"{guest} {with_name(names.get(token, ANONYMOUS), '')}" if speaker_map.other_named else f"{guest} "

    def swap(text: str) -> str | None:
        out = re.sub(r"(<S\d+>) ", seen, text)
        return None if "\0" in out else out

    seen_rows = []
    for r in rows:
        context, target = swap(r.get("context", "")), swap(r["target"])
        if context is not None and target is not None:
            seen_rows.append({**r, "context": context, "target": target})
    return seen_rows


def validation_loss(model_dir: Path, rows: list[dict], cfg: FizzbotConfig, max_rows: int, seed: int,
                    newer: SpeakerMap | None = None) -> float | None:
    """Mean target-token loss of a checkpoint on validation rows (a seeded sample of at most max_rows);
    `newer`: the map the rows were rendered with."""
    from fizzbot.eval.run import target_loss

    rows = as_seen_by(rows, SpeakerMap.load(model_dir / layout.SPEAKER_MAP), newer)
    if not rows:
        return None
    if len(rows) > max_rows:
        rows = random.Random(seed).sample(rows, max_rows)
    return target_loss(model_dir, [r.get("context", "") for r in rows], [r["target"] for r in rows], cfg)


def decide(figures: dict, tolerance: float) -> tuple[bool, str]:
    new, old = figures["new_messages"], figures["old_messages"]
    if new["new"] is None or new["old"] is None:
        return False, "no validation rows among the new messages to compare on"
    if not new["new"] < new["old"]:
        return False, f"not better on the new messages ({new['new']:.4f} vs {new['old']:.4f})"
    if old["new"] is not None and old["old"] is not None and old["new"] > old["old"] * (1 + tolerance):
        return False, f"worse on the old messages beyond the tolerance ({old['new']:.4f} vs {old['old']:.4f}, tolerance {tolerance:.0%})"
    return True, "better on the new messages and not worse beyond the tolerance on the old ones"


def run_update(cfg: FizzbotConfig, model_dir: str | Path, inputs: list[str], overrides: list[str] | None = None, *,
               use_ray: bool = True) -> UpdateResult:
    """The whole update (see the module's docstring); `overrides` (key=value) apply to the new run last."""
    from fizzbot.artifacts.checkpoint import fetch_checkpoint
    from fizzbot.data.pipeline import prepare
    from fizzbot.train.trainer import train

    started = time.perf_counter()
    model_dir = fetch_checkpoint(model_dir)
    if not inputs:
        raise InputError("no new exports: give them with --input PATH", path="--input")
    u = cfg.update
    old_cfg = checkpoint_config(model_dir)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base_dir = Path(u.workdir) if u.workdir else (storage.cache_dir("updates", cfg.run.dir) if storage.is_uri(cfg.run.dir) else Path(cfg.run.dir) / "updates")
    workdir = base_dir / stamp
    workdir.mkdir(parents=True, exist_ok=True)
    _log(f"updating {model_dir} with {', '.join(inputs)}; work folder {workdir}")

    # 1-3: the new examples, with the checkpoint's rules and speaker map, and the replay share.
    old = old_data(cfg, old_cfg, workdir / "old-split")
    new_data = replace(
        old_cfg,
        "data.inputs=" + json.dumps([str(Path(p).absolute()) for p in inputs]),
        f"data.output={workdir / 'new'}",
        f"data.speaker_map={model_dir}",
        # The checkpoint's own convention for its long tail (a config from before data.name_others
        # would otherwise read as the new default).
        f"data.name_others={str(SpeakerMap.load(model_dir / layout.SPEAKER_MAP).other_named).lower()}",
        "data.val_jsonl=null",
        f"data.format={cfg.data.format}",
    ).data
    summary = prepare(new_data, use_ray=use_ray, report=False)
    counts = mix(workdir / "new", old, workdir / "data", u.replay_share, u.seed)
    growth = summary.stats.get("speakers", {})
    _log(f"{counts['new_train']:,} new training and {counts['new_val']:,} new validation examples "
         f"({counts['duplicates_skipped']:,} already seen, skipped); {counts['replayed']:,} old rows replayed")

    # 4: a new run from the checkpoint's weights.
    base, method = continue_from(model_dir, workdir)
    run_name = cfg.run.name if cfg.run.name != "fizzbot" or not old_cfg.run.name else old_cfg.run.name
    train_cfg = replace(
        old_cfg,
        f"data.path={workdir / 'data'}", "data.val_jsonl=null", f"model.base={base}", f"model.method={method}",
        f"run.dir={cfg.run.dir}", f"run.name={run_name}", "run.resume=never",
        f"training.max_steps={u.max_steps}", f"training.warmup_steps={min(u.warmup_steps, u.max_steps)}",
        f"training.eval_steps={u.max_steps}", f"training.save_steps={u.max_steps}",
        *([f"training.learning_rate={u.learning_rate}"] if u.learning_rate else []),
    )
    train_cfg = replace(train_cfg, *(overrides or []))
    result = train(train_cfg, use_ray=use_ray)
    new_checkpoint = result.best_checkpoint

    # 5: old and new, on the new messages and on the old ones.
    figures = {}
    newer = SpeakerMap.load(workdir / "data" / layout.SPEAKER_MAP)
    for name, rows in (("new_messages", _rows(workdir / "data" / layout.VAL_FILE)), ("old_messages", _rows(old.val_path))):
        figures[name] = {
            which: validation_loss(Path(path), rows, train_cfg, u.eval_rows, u.seed, newer) if path else None
            for which, path in (("old", model_dir), ("new", new_checkpoint))
        }
        _log(f"validation loss on the {name.replace('_', ' ')}: old {figures[name]['old']}, new {figures[name]['new']}")
    promoted, reason = decide(figures, u.tolerance)
    report = {
        "format": "fizzbot-update/1",
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "old_checkpoint": str(model_dir),
        "new_checkpoint": str(new_checkpoint) if new_checkpoint else None,
        "inputs": list(inputs),
        "data": {**counts, "speakers": {k: growth.get(k) for k in ("kept", "appended", "tokens", "other_token") if k in growth}},
        "validation_loss": figures,
        "tolerance": u.tolerance,
        "promoted": promoted,
        "reason": reason,
        "serve_app": u.serve_app,
    }
    if promoted and u.serve_app:
        report["serve"] = promote(cfg, new_checkpoint, u.serve_app)
    atomic_write_text(result.run_dir / UPDATE_FILE, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if storage.is_uri(cfg.run.dir):
        from fizzbot.train.runs import push_driver_files

        push_driver_files(result.run)  # the decision beside the run's checkpoints in the bucket
    return UpdateResult(result.run_dir, model_dir, new_checkpoint, promoted, report, time.perf_counter() - started)


def promote(cfg: FizzbotConfig, new_checkpoint: Path, app: str) -> dict:
    """Point the running Serve application `app` at the new checkpoint: a user_config change that Serve
    applies to the running replicas in place (fizzbot.serve.app.swap_model); requests meanwhile are
    answered, those in flight by the old model."""
    from fizzbot.serve.app import swap_model

    return swap_model(app, str(Path(new_checkpoint).resolve()))
