"""`fizzbot prepare`: chat exports -> train.jsonl, val.jsonl, speaker_map.json, stats.json, report.png.

The stages (fizzbot.data.stages) run as Ray Data map operators over work items (input units,
channel clusters, segment shards), or in one plain process with `use_ray=False`; between them the
driver does the two small reductions that need the whole corpus (clusters, then the speaker map and
the split). The output folder is built under a hidden partial name and renamed into place at the
end, so an interrupted run never leaves a folder that looks complete; and it is only ever a new or
empty folder, or one that fizzbot wrote before (its `.fizzbot` marker says so): an output that is an
input, holds one, or holds anything else is refused before any work (`prepared.check_output`).

    fizzbot prepare --input logs/ --output data/prepared
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fizzbot.config import DataConfig
from fizzbot.data.formats import SourceUnit, expand_inputs
from fizzbot.artifacts import prepared
from fizzbot.artifacts.io import atomic_directory, atomic_write_text
from fizzbot.errors import InputError
from fizzbot.chat.speakers import SpeakerMap, build_speaker_map, growth
from fizzbot.data.stages import (
    LENGTH_BINS,
    MAX_ERROR_SAMPLES,
    ChannelStats,
    PrepareSettings,
    merge_stats,
    plan_clusters,
    plan_split,
    add_samples,
    read_stage,
    segment_stage,
    window_stage,
)


@dataclass
class PrepareSummary:
    output: Path
    messages_read: int
    messages_kept: int
    train_examples: int
    val_examples: int
    speakers: int
    channels: int
    seconds: float
    stats: dict


def _log(message: str) -> None:
    print(f"[prepare] {message}", file=sys.stderr, flush=True)


def _apply_all(fn: Callable, items: list, kwargs: dict) -> list:
    # An InputError travels back as a value: re-raised in the driver it reads as one clean line,
    # where raised in a Ray task it would arrive wrapped in Ray's traceback.
    results = []
    for item in items:
        try:
            results.append(("ok", fn(item, **kwargs)))
        except InputError as error:
            results.append(("error", error))
    return results


def run_stage(name: str, fn: Callable, items: list, *, use_ray: bool, **kwargs: Any) -> list:
    """Apply `fn(item, **kwargs)` to every item, in order; Ray Data map_batches or a plain loop."""
    start = time.perf_counter()
    if not items:
        return []
    if use_ray:
        import numpy as np
        import ray
        import ray.data

        from fizzbot.ray_utils import quiet_ray_data

        quiet_ray_data()
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        # A few blocks per CPU balance the load without paying per-task overhead per item.
        blocks = min(len(items), 4 * cpus)
        rows = [{"index": i, "item": pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)} for i, item in enumerate(items)]

        def apply(batch: dict) -> dict:
            decoded = [pickle.loads(b) for b in batch["item"]]
            results = _apply_all(fn, decoded, kwargs)
            return {
                "index": batch["index"],
                "result": np.array([pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in results], dtype=object),
            }

        dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        out = dataset.map_batches(apply, batch_size=None, num_cpus=1).take_all()
        out.sort(key=lambda row: row["index"])
        results = [pickle.loads(row["result"]) for row in out]
    else:
        from tqdm import tqdm

        results = _apply_all(fn, tqdm(items, desc=name, unit="item", leave=False, disable=None), kwargs)
    for status, value in results:
        if status == "error":
            raise value
    _log(f"{name}: {len(items)} items in {time.perf_counter() - start:.1f}s")
    return [value for _, value in results]


def _concatenate(parts: list[str], target: Path) -> None:
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)


def _read_val_jsonl(path: str) -> list[str]:
    """Validate an external validation file: every line a {context, target} object."""
    from fizzbot.artifacts.io import iter_jsonl

    lines = []
    for number, row in iter_jsonl(path):
        for key in ("context", "target"):
            if not isinstance(row.get(key), str):
                raise InputError("missing or not a string", path=path, line=number, field=key)
        lines.append(json.dumps(row, ensure_ascii=False))
    if not lines:
        raise InputError("no rows", path=path)
    return lines


def prepare(data: DataConfig, *, use_ray: bool = True, report: bool = True) -> PrepareSummary:
    """Run the whole preparation; raises InputError (naming file and line) on bad input."""
    started = time.perf_counter()
    settings = PrepareSettings.from_config(data)
    output = Path(data.output).absolute()
    # Before any work: the output must be new, empty, or fizzbot's own, and no input may be inside it.
    prepared.check_output(output, list(data.inputs))
    # An earlier map to keep every assignment of (read before any work, so a bad path fails at once).
    previous = SpeakerMap.load(prepared.find_speaker_map(data.speaker_map)) if data.speaker_map else None
    # Absolute paths: Ray workers run in the directory Ray was started from, not necessarily ours.
    sniff_errors: list[InputError] | None = [] if data.on_error == "skip" else None
    units: list[SourceUnit] = expand_inputs([str(Path(p).absolute()) for p in data.inputs], data.format, sniff_errors)
    formats = Counter(unit.format for unit in units)
    _log(f"{len(units)} input units ({', '.join(f'{n} {f}' for f, n in sorted(formats.items()))})")
    if use_ray:
        from fizzbot.ray_utils import ensure_ray

        ensure_ray()
    with atomic_directory(output) as staging:
        work = staging / "work"
        for sub in ("runs", "segments", "parts"):
            (work / sub).mkdir(parents=True)

        # Stage 1: read and filter every unit.
        read_results = run_stage("read", read_stage, units, use_ray=use_ray, settings=settings, work=work)
        stats: dict[str, ChannelStats] = {}
        skipped = _Skipped(sniff_errors or [])
        for result in read_results:
            merge_stats(stats, result.stats)
            skipped.add(result)
        runs = [run for result in read_results for run in result.runs]
        excluded = frozenset(a for result in read_results for a in result.excluded_authors)
        unmatched = sorted(settings.exclude - {e for result in read_results for e in result.exclude_matched})
        if unmatched:
            _log(f"data.exclude_speakers: {len(unmatched)} name(s) match no author in these inputs: {', '.join(unmatched)}")
        if not runs:
            why = ""
            if skipped.count:
                kinds = ", ".join(f"{n:,} {kind}" for kind, n in skipped.kinds.most_common(3))
                why = f"; {skipped.count:,} records could not be read ({kinds})"
            raise InputError(
                f"no messages left after cleaning (check data.format, data.drop_bots and the filters){why}",
                path=", ".join(data.inputs),
            )

        # Stage 2: merge each cluster of runs, drop floods, cut into segments and shards.
        clusters = plan_clusters(runs, settings.gap_seconds, settings.flood_window_seconds)
        segment_results = run_stage("segment", segment_stage, clusters, use_ray=use_ray, settings=settings, work=work, excluded=excluded)

        # Reduction: the speaker map over the whole corpus, and the split.
        counts: Counter = Counter()
        latest: dict[str, tuple[float, str]] = {}
        lengths = [0] * (len(LENGTH_BINS) - 1)
        for result in segment_results:
            counts.update(result.author_counts)
            for author, seen in result.usernames.items():
                if author not in latest or seen >= latest[author]:
                    latest[author] = seen
            channel_stats = stats[result.channel]
            channel_stats.dropped["flood"] += result.flood_dropped
            channel_stats.dropped["duplicate"] += result.duplicate_dropped
            channel_stats.kept += result.kept
            channel_stats.segments += len(result.segment_sizes)
            channel_stats.excluded += result.excluded
            lengths = [a + b for a, b in zip(lengths, result.lengths)]
        if not counts:
            raise InputError("no messages left after the flood filter", path=", ".join(data.inputs))
        # A stable map keeps its long tail's convention (named or faceless) unless data.name_others is
        # given: a checkpoint trained one way refuses data rendered the other.
        name_others = data.name_others
        if previous is not None and "name_others" not in data.model_fields_set:
            name_others = previous.other_named
        speaker_map = build_speaker_map(counts, {a: name for a, (_, name) in latest.items()}, data.max_speakers, previous, excluded, name_others)
        val_from = plan_split(segment_results, data.val_split, data.val_split_by, data.seed, data.val_jsonl is not None)

        # Stage 3: window every shard into examples.
        shards = [shard for result in segment_results for shard in result.shards]
        tasks = [(shard, {sid: val_from[sid] for sid in shard.segments}) for shard in shards]
        window_results = run_stage(
            "window",
            _window_task,
            tasks,
            use_ray=use_ray,
            speaker_map=speaker_map,
            settings=settings,
            work=work,
            excluded=excluded,
        )
        for result in window_results:
            for channel, n in result.train_by_channel.items():
                stats[channel].train_examples += n
            for channel, n in result.val_by_channel.items():
                stats[channel].val_examples += n

        _concatenate([r.train_path for r in window_results], staging / prepared.TRAIN_FILE)
        if data.val_jsonl:
            atomic_write_text(staging / prepared.VAL_FILE, "\n".join(_read_val_jsonl(data.val_jsonl)) + "\n")
        else:
            _concatenate([r.val_path for r in window_results], staging / prepared.VAL_FILE)
        shutil.rmtree(work)
        speaker_map.save(staging / prepared.SPEAKER_MAP)

        n_train = sum(s.train_examples for s in stats.values())
        n_val = sum(s.val_examples for s in stats.values()) if not data.val_jsonl else _count_lines(staging / prepared.VAL_FILE)
        if n_train == 0:
            raise InputError(
                "no training examples: every conversation is shorter than data.min_context_messages + 1 "
                "(and data.openers is false, or every author is in data.exclude_speakers)",
                path=", ".join(data.inputs),
            )
        stats_doc = _stats_document(data, units, formats, stats, speaker_map, counts, lengths, skipped, n_train, n_val)
        stats_doc["speakers"].update(_speaker_history(previous, speaker_map, data.speaker_map))
        stats_doc["excluded"] = {
            "mode": data.exclude_mode,
            "authors": len(excluded),
            "messages": sum(s.excluded for s in stats.values()),
            "unmatched": unmatched,
        }
        stats_doc["seconds"] = round(time.perf_counter() - started, 2)
        atomic_write_text(staging / prepared.STATS_FILE, json.dumps(stats_doc, indent=2, ensure_ascii=False) + "\n")
        if report:
            from fizzbot.data.report import draw_report

            draw_report(stats_doc, speaker_map, staging / prepared.REPORT_FILE)
        prepared.mark_prepared(staging)
    seconds = time.perf_counter() - started
    total_read = sum(s.read for s in stats.values())
    total_kept = sum(s.kept for s in stats.values())
    _log(
        f"{total_read:,} messages read, {total_kept:,} kept; {n_train:,} train and {n_val:,} val examples; "
        f"{len(speaker_map.tokens)} speaker tokens; {seconds:.1f}s -> {output}"
    )
    for line in summary_lines(stats_doc):
        _log(line)
    return PrepareSummary(output, total_read, total_kept, n_train, n_val, len(speaker_map.tokens), len(stats), seconds, stats_doc)


def _speaker_history(previous: SpeakerMap | None, speaker_map: SpeakerMap, source: str | None) -> dict:
    """What a stable map (data.speaker_map) kept and added; a fresh map appends every speaker."""
    if previous is None:
        return {"previous_map": None, "kept": 0, "appended": len(speaker_map.speakers), "retired": 0}
    return {"previous_map": source, **growth(previous, speaker_map)}


def _window_task(task, **kwargs):
    shard, val_from = task
    return window_stage(shard, val_from=val_from, **kwargs)


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


class _Skipped:
    """Skipped records and warnings gathered over the read stage: counts per kind, and samples."""

    def __init__(self, sniff_errors: list[InputError]):
        self.count = len(sniff_errors)
        self.kinds: Counter = Counter(error.kind for error in sniff_errors)
        self.samples = add_samples([], (error.to_dict() for error in sniff_errors))
        self.warnings: list[dict] = []
        self.warning_count = 0

    def add(self, result) -> None:
        self.count += result.error_count
        self.kinds.update(result.error_kinds)
        add_samples(self.samples, result.errors)
        self.warning_count += len(result.warnings)
        self.warnings.extend(result.warnings[: max(0, MAX_ERROR_SAMPLES - len(self.warnings))])


def summary_lines(stats_doc: dict) -> list[str]:
    """What the read stage skipped, merged and noticed, as lines for the log (empty when nothing)."""
    lines = []
    errors = stats_doc["errors"]
    if errors["skipped"]:
        kinds = ", ".join(f"{n:,} {kind}" for kind, n in list(errors["by_kind"].items())[:6])
        more = f", and {len(errors['by_kind']) - 6} more kinds" if len(errors["by_kind"]) > 6 else ""
        records = "record" if errors["skipped"] == 1 else "records"
        lines.append(f"skipped {errors['skipped']:,} {records} that could not be read ({kinds}{more}); samples in stats.json")
    totals = stats_doc["totals"]
    if totals["dropped"].get("duplicate"):
        lines.append(f"{totals['dropped']['duplicate']:,} duplicate messages (read twice from overlapping exports) kept once")
    if totals["attachment_placeholders"]:
        lines.append(f"{totals['attachment_placeholders']:,} attachment-only messages kept as placeholders")
    if totals["dropped"].get("attachment"):
        lines.append(f"{totals['dropped']['attachment']:,} attachment-only messages dropped (data.keep_attachments=false)")
    warnings = stats_doc["warnings"]
    for sample in warnings["samples"][:3]:
        lines.append(f"warning: {sample['path']}: {sample['error']}")
    if warnings["count"] > 3:
        lines.append(f"... and {warnings['count'] - 3} more warnings in stats.json")
    return lines


def _stats_document(data, units, formats, stats, speaker_map: SpeakerMap, counts, lengths, skipped: _Skipped, n_train, n_val) -> dict:
    dropped = Counter()
    for s in stats.values():
        dropped.update(s.dropped)
    return {
        "inputs": list(data.inputs),
        "units": len(units),
        "formats": dict(sorted(formats.items())),
        "totals": {
            "read": sum(s.read for s in stats.values()),
            "kept": sum(s.kept for s in stats.values()),
            "dropped": {reason: dropped.get(reason, 0) for reason in ChannelStats().to_json()["dropped"]},
            "attachment_placeholders": sum(s.placeholders for s in stats.values()),
            "segments": sum(s.segments for s in stats.values()),
            "excluded": sum(s.excluded for s in stats.values()),
            "examples": {"train": n_train, "val": n_val},
        },
        "speakers": {
            "authors": len(counts),
            "tokens": len(speaker_map.tokens),
            "with_own_token": sum(1 for s in speaker_map.speakers if not s.retired),
            "sharing_other_token": speaker_map.other_authors,
            "other_token": speaker_map.other_token,
        },
        "message_length_histogram": {
            f"{LENGTH_BINS[i]}-{LENGTH_BINS[i + 1] - 1 if LENGTH_BINS[i + 1] < 10**9 else ''}": n
            for i, n in enumerate(lengths)
        },
        "errors": {
            "skipped": skipped.count,
            "by_kind": dict(skipped.kinds.most_common()),
            "samples": skipped.samples,
        },
        "warnings": {"count": skipped.warning_count, "samples": skipped.warnings},
        "channels": {name: s.to_json() for name, s in sorted(stats.items())},
        "config": data.model_dump(mode="json"),
    }
