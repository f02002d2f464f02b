"""The three per-shard stages of `fizzbot prepare`, as plain functions over files on disk.

  read     one input unit  -> time-sorted runs of kept messages, one per channel in the unit
  segment  one cluster     -> the runs of a channel that overlap in time, merged, flood-filtered and
                              cut into conversation segments, written as shards
  window   one shard       -> train/val JSONL parts

Between them the driver does two small reductions (clusters from run metadata; the speaker map and
the split from segment metadata). Each stage reads its input from and writes its output to the
work folder, so a worker holds one unit, one cluster or one shard at a time: memory follows the
largest channel's overlapping files, not the corpus. The same functions run in one plain process
(`use_ray=False`) and under Ray Data; both give byte-identical output.
"""

from __future__ import annotations

import bisect
import heapq
import pickle
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

from fizzbot.data.clean import DROP_REASONS, FloodFilter, apply_placeholder, drop_reason, duplicate_flags, scrub_pii
from fizzbot.data.formats import SourceUnit, read_unit
from fizzbot.data.messages import InputError, Message, ReadOptions
from fizzbot.chat.render import ANONYMOUS, with_name
from fizzbot.chat.speakers import SpeakerMap
from fizzbot.data.windows import WindowSettings, segment_id, split_segments, window_segment_jsonl

# Message length histogram: fixed bins (characters) so that per-shard histograms add up.
LENGTH_BINS = (0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 10**9)
MAX_ERROR_SAMPLES = 20
# Samples kept of each kind of skipped record (so a rare kind is not crowded out by a common one).
SAMPLES_PER_KIND = 3


@dataclass(frozen=True)
class PrepareSettings:
    """What the stages need from DataConfig, as a small picklable value."""

    on_error: str
    irc_channel: str | None
    max_message_chars: int
    drop_bots: bool
    bot_usernames: frozenset[str]
    scrub_pii: bool
    flood_min_authors: int
    flood_window_seconds: float
    flood_min_chars: int
    gap_seconds: float
    shard_messages: int
    window: WindowSettings
    # data.exclude_speakers, case-folded (matched against author ids and usernames), and data.exclude_mode.
    exclude: frozenset[str] = frozenset()
    exclude_mode: str = "anonymize"
    timezone: str | None = None
    # Placeholder text per attachment kind; None drops attachment-only messages (data.keep_attachments).
    placeholders: dict[str, str] | None = field(default_factory=lambda: {"file": "[file]"})

    @classmethod
    def from_config(cls, data) -> "PrepareSettings":
        return cls(
            on_error=data.on_error,
            irc_channel=data.irc_channel,
            max_message_chars=data.max_message_chars,
            drop_bots=data.drop_bots,
            bot_usernames=frozenset(name.lower() for name in data.bot_usernames),
            scrub_pii=data.scrub_pii,
            flood_min_authors=data.flood_min_authors,
            flood_window_seconds=data.flood_window_seconds,
            flood_min_chars=data.flood_min_chars,
            gap_seconds=data.conversation_gap_minutes * 60.0,
            shard_messages=data.shard_messages,
            timezone=data.timezone,
            placeholders=data.attachment_placeholders.model_dump() if data.keep_attachments else None,
            window=WindowSettings(
                min_context=data.min_context_messages,
                max_context=data.max_context_messages,
                max_context_chars=data.max_context_chars,
                seed=data.seed,
                openers=data.openers,
            ),
            exclude=frozenset(name.strip().casefold() for name in data.exclude_speakers),
            exclude_mode=data.exclude_mode,
        )

    def excludes(self, message: Message) -> str | None:
        """The data.exclude_speakers entry (case-folded) that names this message's author, if any."""
        for key in (message.author_id.casefold(), message.username.casefold()):
            if key in self.exclude:
                return key
        return None


# --- compact message storage between stages ----------------------------------------------------
# Tuples pickle several times faster than dataclass instances, and these files are the hot path.


def _dump(path: Path, segments_or_messages) -> None:
    with open(path, "wb") as fh:
        pickle.dump(segments_or_messages, fh, protocol=pickle.HIGHEST_PROTOCOL)


def _load(path: str | Path):
    with open(path, "rb") as fh:
        return pickle.load(fh)


def _as_tuple(m: Message) -> tuple:
    return (m.channel, m.author_id, m.username, m.content, m.ts, m.order, m.format, m.msg_id)


def _from_tuple(t: tuple) -> Message:
    # Positional (channel, author_id, username, content, ts, order, is_bot, is_system, format, msg_id):
    # keywords cost a tenth of a second per million messages, and every stage loads them.
    return Message(t[0], t[1], t[2], t[3], t[4], t[5], False, False, t[6], t[7])


# --- per-channel counters ------------------------------------------------------------------------


@dataclass
class ChannelStats:
    format: str = ""
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    segments: int = 0
    train_examples: int = 0
    val_examples: int = 0
    excluded: int = 0  # messages by people who opted out (kept anonymous, or dropped)
    placeholders: int = 0  # attachment-only messages kept as their placeholder text

    def merge(self, other: "ChannelStats") -> None:
        self.format = self.format or other.format
        self.read += other.read
        self.kept += other.kept
        self.dropped.update(other.dropped)
        self.placeholders += other.placeholders
        self.segments += other.segments
        self.excluded += other.excluded
        self.train_examples += other.train_examples
        self.val_examples += other.val_examples

    def to_json(self) -> dict:
        return {
            "format": self.format,
            "read": self.read,
            "kept": self.kept,
            "dropped": {reason: self.dropped.get(reason, 0) for reason in DROP_REASONS},
            "attachment_placeholders": self.placeholders,
            "segments": self.segments,
            "excluded": self.excluded,
            "examples": {"train": self.train_examples, "val": self.val_examples},
        }


def merge_stats(into: dict[str, ChannelStats], part: dict[str, ChannelStats]) -> None:
    for channel, stats in part.items():
        into.setdefault(channel, ChannelStats()).merge(stats)


# --- stage 1: read -------------------------------------------------------------------------------


@dataclass
class RunInfo:
    """A time-sorted run of one channel's kept messages from one unit (before the flood filter)."""

    channel: str
    path: str
    count: int
    first_ts: float
    last_ts: float


@dataclass
class ReadResult:
    unit_index: int
    runs: list[RunInfo]
    stats: dict[str, ChannelStats]
    errors: list[dict]  # samples of the skipped records, a few of each kind
    error_count: int
    # Authors named by data.exclude_speakers (by id or by any username they wrote under here), and
    # which entries matched: the driver joins them, so a rename between files cannot hide anyone.
    excluded_authors: set[str] = field(default_factory=set)
    exclude_matched: set[str] = field(default_factory=set)
    error_kinds: Counter = field(default_factory=Counter)  # skipped records per kind
    warnings: list[dict] = field(default_factory=list)


def add_samples(samples: list[dict], more: Iterable[dict]) -> list[dict]:
    """`samples` with `more` added in order, up to MAX_ERROR_SAMPLES in all and SAMPLES_PER_KIND of a kind."""
    taken = Counter(sample["kind"] for sample in samples)
    for sample in more:
        if len(samples) >= MAX_ERROR_SAMPLES:
            break
        if taken[sample["kind"]] < SAMPLES_PER_KIND:
            taken[sample["kind"]] += 1
            samples.append(sample)
    return samples


def read_stage(unit: SourceUnit, settings: PrepareSettings, work: Path) -> ReadResult:
    opts = ReadOptions(
        on_error=settings.on_error,
        irc_channel=settings.irc_channel,
        max_message_chars=settings.max_message_chars,
        timezone=settings.timezone,
    )
    by_channel: dict[str, list[Message]] = {}
    stats: dict[str, ChannelStats] = {}
    excluded_authors: set[str] = set()
    exclude_matched: set[str] = set()
    try:
        for message in read_unit(unit, opts):
            channel_stats = stats.get(message.channel)
            if channel_stats is None:
                channel_stats = stats[message.channel] = ChannelStats(format=message.format)
            channel_stats.read += 1
            if settings.exclude:
                entry = settings.excludes(message)
                if entry is not None:
                    excluded_authors.add(message.author_id)
                    exclude_matched.add(entry)
            if message.attachment is not None and apply_placeholder(message, settings.placeholders):
                channel_stats.placeholders += 1
            reason = drop_reason(message, drop_bots=settings.drop_bots, bot_usernames=settings.bot_usernames)
            if reason is not None:
                channel_stats.dropped[reason] += 1
                continue
            if settings.scrub_pii:
                message.content = scrub_pii(message.content)
            by_channel.setdefault(message.channel, []).append(message)
    except InputError as error:
        # A whole-file problem (empty, malformed JSON document, not UTF-8, not the format at all):
        # under `skip` the file is one skipped record, like a bad line; otherwise it stops the run.
        if settings.on_error != "skip":
            raise
        opts.errors.append(error)
    runs = []
    for number, (channel, messages) in enumerate(by_channel.items()):
        messages.sort(key=Message.sort_key)
        path = work / "runs" / f"{unit.index:06d}-{number:03d}.pkl"
        _dump(path, [_as_tuple(m) for m in messages])
        runs.append(RunInfo(channel, str(path), len(messages), messages[0].ts, messages[-1].ts))
    return ReadResult(
        unit.index,
        runs,
        stats,
        add_samples([], (error.to_dict() for error in opts.errors)),
        len(opts.errors),
        excluded_authors,
        exclude_matched,
        Counter(error.kind for error in opts.errors),
        [w.to_dict() for w in opts.warnings[:MAX_ERROR_SAMPLES]],
    )


# --- between stages 1 and 2: clusters ------------------------------------------------------------


@dataclass
class Cluster:
    """Runs of one channel that overlap in time (or come within the gap): merged together.

    Runs further apart than the conversation gap cannot share a segment or a flood (the flood
    window is shorter than the gap), so they are independent units of work; this is what lets one
    busy channel spread over every worker.
    """

    index: int
    channel: str
    run_paths: list[str]


def plan_clusters(runs: list[RunInfo], gap_seconds: float, flood_window: float) -> list[Cluster]:
    reach = max(gap_seconds, flood_window)
    by_channel: dict[str, list[RunInfo]] = {}
    for run in runs:
        by_channel.setdefault(run.channel, []).append(run)
    clusters: list[Cluster] = []
    for channel in sorted(by_channel):
        current: list[RunInfo] = []
        current_end = 0.0
        for run in sorted(by_channel[channel], key=lambda r: (r.first_ts, r.path)):
            if current and run.first_ts - current_end > reach:
                clusters.append(Cluster(len(clusters), channel, [r.path for r in current]))
                current = []
            current_end = max(current_end, run.last_ts) if current else run.last_ts
            current.append(run)
        if current:
            clusters.append(Cluster(len(clusters), channel, [r.path for r in current]))
    return clusters


# --- stage 2: segment ----------------------------------------------------------------------------


@dataclass
class ShardInfo:
    path: str
    segments: list[str]  # segment ids, in time order
    messages: int


@dataclass
class SegmentResult:
    cluster_index: int
    channel: str
    shards: list[ShardInfo]
    segment_sizes: list[tuple[str, float, int]]  # (segment id, first ts, messages), in time order
    author_counts: Counter
    usernames: dict[str, tuple[float, str]]  # author id -> (ts, username) of their latest message
    flood_dropped: int
    kept: int
    lengths: list[int]
    excluded: int = 0  # messages by excluded authors (anonymized: kept; dropped: gone before the flood filter)
    duplicate_dropped: int = 0


def segment_stage(cluster: Cluster, settings: PrepareSettings, work: Path, excluded: frozenset[str] = frozenset()) -> SegmentResult:
    """`excluded`: author ids of people who opted out (data.exclude_speakers, resolved by the driver)."""
    runs = [[_from_tuple(t) for t in _load(path)] for path in cluster.run_paths]
    messages = runs[0] if len(runs) == 1 else list(heapq.merge(*runs, key=Message.sort_key))
    duplicates = duplicate_flags(runs, messages) if len(runs) > 1 else None
    if duplicates is not None:
        messages = [m for m, duplicate in zip(messages, duplicates) if not duplicate]
    n_excluded = sum(1 for m in messages if m.author_id in excluded) if excluded else 0
    if n_excluded and settings.exclude_mode == "drop":
        messages = [m for m in messages if m.author_id not in excluded]
    flags = FloodFilter(settings.flood_min_authors, settings.flood_window_seconds, settings.flood_min_chars).flags(messages)
    kept = [m for m, flood in zip(messages, flags) if not flood]
    segments = split_segments(kept, settings.gap_seconds)

    counts: Counter = Counter()
    usernames: dict[str, tuple[float, str]] = {}
    lengths = [0] * (len(LENGTH_BINS) - 1)
    for message in kept:
        lengths[bisect.bisect_right(LENGTH_BINS, len(message.content)) - 1] += 1
        if message.author_id in excluded:
            continue  # no count, no username: they get no speaker token
        counts[message.author_id] += 1
        seen = usernames.get(message.author_id)
        if seen is None or message.ts >= seen[0]:
            usernames[message.author_id] = (message.ts, message.username)

    shards: list[ShardInfo] = []
    batch: list[list[Message]] = []
    batch_messages = 0

    def flush() -> None:
        nonlocal batch, batch_messages
        if not batch:
            return
        path = work / "segments" / f"{cluster.index:06d}-{len(shards):04d}.pkl"
        _dump(path, [[_as_tuple(m) for m in seg] for seg in batch])
        shards.append(ShardInfo(str(path), [segment_id(seg) for seg in batch], batch_messages))
        batch, batch_messages = [], 0

    for segment in segments:
        if batch and batch_messages + len(segment) > settings.shard_messages:
            flush()
        batch.append(segment)
        batch_messages += len(segment)
    flush()
    return SegmentResult(
        cluster_index=cluster.index,
        channel=cluster.channel,
        shards=shards,
        segment_sizes=[(segment_id(s), s[0].ts, len(s)) for s in segments],
        author_counts=counts,
        usernames=usernames,
        flood_dropped=sum(flags),
        kept=len(kept),
        lengths=lengths,
        excluded=n_excluded,
        duplicate_dropped=sum(duplicates) if duplicates is not None else 0,
    )


# --- between stages 2 and 3: the split -----------------------------------------------------------


def plan_split(results: list[SegmentResult], val_split: float, by: str, seed: int, external_val: bool) -> dict[str, int]:
    """segment id -> index of its first validation target (past the end: none).

    `time`: the latest `val_split` of each channel's messages, so no validation target precedes a
    training target of its channel and no training context ever holds a validation target.
    `channel`: whole channels, chosen by a seeded shuffle, until `val_split` of all messages.
    """
    plan: dict[str, int] = {}
    by_channel: dict[str, list[tuple[str, float, int]]] = {}
    for result in results:
        by_channel.setdefault(result.channel, []).extend(result.segment_sizes)
    if external_val or val_split <= 0:
        return {sid: n for sizes in by_channel.values() for sid, _, n in sizes}
    if by == "channel":
        import random

        channels = sorted(by_channel)
        if len(channels) < 2:
            raise InputError(
                "data.val_split_by=channel needs at least two channels; use data.val_split_by=time",
                path="data.val_split_by",
            )
        random.Random(f"val:{seed}").shuffle(channels)
        total = sum(n for sizes in by_channel.values() for _, _, n in sizes)
        held, val_channels = 0, set()
        for channel in channels[:-1]:  # at least one channel stays for training
            if held >= val_split * total:
                break
            val_channels.add(channel)
            held += sum(n for _, _, n in by_channel[channel])
        return {
            sid: (0 if channel in val_channels else n)
            for channel, sizes in by_channel.items()
            for sid, _, n in sizes
        }
    for channel, sizes in by_channel.items():
        sizes.sort(key=lambda s: s[1])
        total = sum(n for _, _, n in sizes)
        n_val = int(round(total * val_split))
        cut = total - n_val  # messages before the cut are training targets
        seen = 0
        for sid, _, n in sizes:
            plan[sid] = min(max(cut - seen, 0), n)
            seen += n
    return plan


# --- stage 3: window -----------------------------------------------------------------------------


@dataclass
class WindowResult:
    shard_path: str
    train_path: str
    val_path: str
    train_by_channel: Counter
    val_by_channel: Counter


def named_others(segment: list[Message], tokens: list[str], other_token: str | None, excluded: frozenset[str]) -> list[Message]:
    """The segment with every long-tail message's author named in its text (data.name_others); an
    opted-out author keeps the others token and is named ANONYMOUS."""
    if other_token is None:
        return segment
    return [
        replace(m, content=with_name(ANONYMOUS if m.author_id in excluded else m.username, m.content)) if t == other_token else m
        for m, t in zip(segment, tokens)
    ]


def window_stage(
    shard: ShardInfo,
    speaker_map: SpeakerMap,
    val_from: dict[str, int],
    settings: PrepareSettings,
    work: Path,
    excluded: frozenset[str] = frozenset(),
) -> WindowResult:
    """Examples of one shard as JSONL text; `excluded` authors (opted out) are never targets and
    speak under the others token where their messages were kept."""
    segments = [[_from_tuple(t) for t in seg] for seg in _load(shard.path)]
    stem = Path(shard.path).stem
    train_path = work / "parts" / f"{stem}.train.jsonl"
    val_path = work / "parts" / f"{stem}.val.jsonl"
    train_counts: Counter = Counter()
    val_counts: Counter = Counter()
    with open(train_path, "w", encoding="utf-8") as train_fh, open(val_path, "w", encoding="utf-8") as val_fh:
        for segment, sid in zip(segments, shard.segments):
            speaker = [speaker_map.token_for_author(m.author_id) for m in segment]
            if speaker_map.other_named:
                segment = named_others(segment, speaker, speaker_map.other_token, excluded)
            targets = [m.author_id not in excluded for m in segment] if excluded else None
            train_lines, val_lines = [], []
            for is_val, line in window_segment_jsonl(segment, speaker, settings.window, val_from[sid], targets):
                (val_lines if is_val else train_lines).append(line)
            if train_lines:
                train_fh.write("\n".join(train_lines) + "\n")
                train_counts[segment[0].channel] += len(train_lines)
            if val_lines:
                val_fh.write("\n".join(val_lines) + "\n")
                val_counts[segment[0].channel] += len(val_lines)
    return WindowResult(shard.path, str(train_path), str(val_path), train_counts, val_counts)
