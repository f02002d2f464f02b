"""Segments and context windows, as properties over random message streams (hypothesis).

Streams have several channels that overlap in time, random gaps (ties, short pauses, exactly the
conversation gap, long silences), random authors and random text (special-token look-alikes included).
Every message's content carries its own id (`m<id>|...|m<id>`), so a context line can be traced back to
the message it renders.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fizzbot.data.formats import expand_inputs, read_unit
from fizzbot.chat.tokens import EOT, SPEAKER_TOKEN_RE
from fizzbot.data.messages import Message, ReadOptions, clean_content
from fizzbot.chat.speakers import build_speaker_map
from fizzbot.data.stages import (
    PrepareSettings,
    plan_clusters,
    plan_split,
    read_stage,
    segment_stage,
    window_stage,
)
from fizzbot.chat.render import render
from fizzbot.data.windows import WindowSettings, segment_id, split_segments, window_segment

GAP = 3600.0
BASE_TS = 1_600_000_000.0
ID_RE = re.compile(r"\|m(\d+) " + re.escape(EOT) + r"$")
TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp"), exclude_characters="|"),
    max_size=160,
)
LOOKALIKES = st.sampled_from(["", " <S0>", " <S12> hi", " <EOT>", " <eot>", " <S>"])


@st.composite
def streams(draw, max_channels: int = 3, max_per_channel: int = 40) -> list[Message]:
    """Messages of 1..3 channels, each channel time-ordered; ids are unique over the stream."""
    messages: list[Message] = []
    n_channels = draw(st.integers(1, max_channels))
    for c in range(n_channels):
        ts = BASE_TS + draw(st.integers(0, 600))  # channels start close together and interleave
        count = draw(st.integers(0, max_per_channel))
        for _ in range(count):
            ts += draw(st.one_of(
                st.integers(0, 90),  # ties (minute-precision logs) and short pauses
                st.sampled_from([GAP, GAP + 1]),  # at the gap: still one conversation; just past it: two
                st.integers(int(GAP) + 1, 5 * int(GAP)),  # a long silence
            ))
            author = draw(st.integers(0, 6))
            ident = len(messages)
            text = draw(TEXT) + draw(LOOKALIKES)
            messages.append(Message(
                channel=f"#chan{c}",
                author_id=f"id{author}",
                username=f"User{author}",
                content=clean_content(f"m{ident}|{text}|m{ident}", 2000),
                ts=float(ts),
                order=ident,
            ))
    return messages


def by_channel(messages: list[Message]) -> dict[str, list[Message]]:
    out: dict[str, list[Message]] = {}
    for m in sorted(messages, key=Message.sort_key):
        out.setdefault(m.channel, []).append(m)
    return out


def message_id(line: str) -> int:
    m = ID_RE.search(line)
    assert m, f"context line carries no message id: {line!r}"
    return int(m.group(1))


def context_lines(context: str) -> list[str]:
    assert context == "" or context.endswith("\n")
    return context.split("\n")[:-1] if context else []


@st.composite
def window_settings(draw, min_chars: int = 16) -> WindowSettings:
    low = draw(st.integers(0, 3))
    high = draw(st.integers(max(low, 1), 8))
    return WindowSettings(low, high, draw(st.integers(min_chars, 600)), draw(st.integers(0, 2**32)), draw(st.booleans()))


def target_indices(n: int, ws: WindowSettings) -> list[int]:
    """Which messages of an n-message segment are targets: the opener (with openers), then every
    message from the min_context-th on."""
    opener = [0] if ws.openers and ws.min_context > 0 and n else []
    return opener + list(range(ws.min_context, n))


# --- segments -------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(streams())
def test_segments_partition_a_channel_at_long_silences(messages):
    for channel, stream in by_channel(messages).items():
        segments = split_segments(stream, GAP)
        # Every message once, in order; no empty segment.
        assert [m for seg in segments for m in seg] == stream
        assert all(segments)
        for seg in segments:
            assert {m.channel for m in seg} == {channel}
            # Within a segment time never goes back and no silence exceeds the gap.
            assert all(0 <= b.ts - a.ts <= GAP for a, b in zip(seg, seg[1:]))
        # Between segments it does.
        assert all(b[0].ts - a[-1].ts > GAP for a, b in zip(segments, segments[1:]))


# --- windows --------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(streams(), window_settings(min_chars=60), st.integers(2, 5), st.floats(0, 1.2))
def test_window_invariants(messages, ws, max_speakers, val_at):
    by_id = {int(m.content.split("|", 1)[0][1:]): m for m in messages}
    smap = build_speaker_map(Counter(m.author_id for m in messages), {m.author_id: m.username for m in messages}, max_speakers)
    known_tokens = set(smap.tokens)
    seen_targets = []
    for channel, stream in by_channel(messages).items():
        for segment in split_segments(stream, GAP):
            position = {id(m): i for i, m in enumerate(segment)}
            tokens = [smap.token_for_author(m.author_id) for m in segment]
            val_from = int(len(segment) * val_at)
            rows = list(window_segment(segment, tokens, ws, val_from))
            # One example per message past the first min_context ones, and the opener with `openers`.
            assert len(rows) == len(target_indices(len(segment), ws))
            for (is_val, row), index in zip(rows, target_indices(len(segment), ws)):
                target = segment[index]
                assert row["target"] == render(tokens[index], target.content)
                assert (row["channel"], row["speaker"], row["ts"]) == (channel, tokens[index], round(target.ts, 3))
                assert is_val == (index >= val_from)
                seen_targets.append(message_id(row["target"]))

                lines = context_lines(row["context"])
                # Bounds: message count and the character budget.
                assert len(lines) <= ws.max_context
                assert len(row["context"]) <= ws.max_context_chars
                # Only a context that the budget cut may be shorter than the drawn minimum.
                if len(lines) < min(ws.min_context, index):
                    full = sum(len(render(t, m.content)) + 1 for t, m in zip(tokens[index - ws.min_context:index], segment[index - ws.min_context:index]))
                    assert full > ws.max_context_chars
                ids = [message_id(line) for line in lines]
                context = [by_id[i] for i in ids]
                # Never the target itself; only earlier messages of the target's own segment, the
                # ones right before it, in time order.
                assert message_id(row["target"]) not in ids
                assert all(id(m) in position for m in context), "a context reaches outside its segment"
                assert [position[id(m)] for m in context] == list(range(index - len(context), index))
                assert all(m.channel == channel for m in context)
                assert all(a.ts <= b.ts for a, b in zip(context, context[1:]))
                assert all(m.ts <= target.ts for m in context)
                # Every speaker token in the output is one of the map's; typed look-alikes are not tokens.
                for text in (row["context"], row["target"]):
                    for found in SPEAKER_TOKEN_RE.finditer(text):
                        assert found.group(0) in known_tokens
                for line, token, m in zip(lines, [tokens[position[id(m)]] for m in context], context):
                    assert line.startswith(token + " ") and line.endswith(" " + EOT)
                    assert line.count(EOT) == 1 and len(SPEAKER_TOKEN_RE.findall(line)) == 1
    # Every target exactly once.
    assert len(seen_targets) == len(set(seen_targets))


@settings(max_examples=80, deadline=None)
@given(streams(max_channels=1), window_settings(min_chars=16), st.integers(2, 200))
def test_context_fits_any_budget(messages, ws, max_speakers):
    """Even a budget too small for one whole message (the oldest text is cut, the token kept)."""
    smap = build_speaker_map(Counter(m.author_id for m in messages), {}, max_speakers)
    for stream in by_channel(messages).values():
        for segment in split_segments(stream, GAP):
            tokens = [smap.token_for_author(m.author_id) for m in segment]
            for _, row in window_segment(segment, tokens, ws, len(segment)):
                assert len(row["context"]) <= ws.max_context_chars
                assert len(context_lines(row["context"])) <= ws.max_context


def test_tokens_beyond_s9_fit_the_smallest_budget():
    """A 16-character budget (the config's minimum) with a two-digit speaker token."""
    segment = [Message("#c", "a", "a", "x" * 100, 0.0, 0), Message("#c", "b", "b", "reply", 1.0, 1)]
    rows = list(window_segment(segment, ["<S12>", "<S13>"], WindowSettings(1, 1, 16, 0), 2))
    assert len(rows) == 2 and rows[0][1]["context"] == ""  # the opener
    assert len(rows[1][1]["context"]) <= 16


@settings(max_examples=40, deadline=None)
@given(streams(max_channels=1), window_settings())
def test_same_seed_same_windows(messages, ws):
    for stream in by_channel(messages).values():
        for segment in split_segments(stream, GAP):
            tokens = ["<S0>"] * len(segment)
            first = list(window_segment(segment, tokens, ws, len(segment)))
            again = list(window_segment(segment, tokens, ws, len(segment)))
            assert first == again
            # Copies of the messages (as another worker unpickles them) give the same windows too.
            copies = [Message(m.channel, m.author_id, m.username, m.content, m.ts, m.order) for m in segment]
            assert list(window_segment(copies, tokens, ws, len(segment))) == first


def test_the_seed_changes_the_draw():
    segment = [Message("#c", f"a{i % 3}", f"a{i % 3}", f"message number {i}", float(i), i) for i in range(200)]
    tokens = ["<S0>"] * len(segment)
    draws = {
        seed: [row["context"].count("\n") for _, row in window_segment(segment, tokens, WindowSettings(1, 8, 10_000, seed, openers=False), 200)]
        for seed in (0, 1)
    }
    assert draws[0] != draws[1]
    assert set(draws[0]) == set(range(1, 9))  # k is drawn over the whole range


@settings(max_examples=60, deadline=None)
@given(streams(max_channels=1), window_settings(), st.data())
def test_openers_and_context_only_messages_move_no_other_window(messages, ws, data):
    """Openers draw nothing and context-only messages (people who opted out) draw and are skipped,
    so turning either on adds or removes exactly those rows and leaves every other row as it was."""
    for stream in by_channel(messages).values():
        for segment in split_segments(stream, GAP):
            tokens = [f"<S{i % 3}>" for i in range(len(segment))]
            plain = WindowSettings(ws.min_context, ws.max_context, ws.max_context_chars, ws.seed, openers=False)
            base = {message_id(row["target"]): row for _, row in window_segment(segment, tokens, plain, len(segment))}
            targets = [data.draw(st.booleans()) for _ in segment]
            opened = WindowSettings(ws.min_context, ws.max_context, ws.max_context_chars, ws.seed, openers=True)
            rows = list(window_segment(segment, tokens, opened, len(segment), targets))
            expected = [i for i in target_indices(len(segment), opened) if targets[i]]
            assert [message_id(row["target"]) for _, row in rows] == [message_id(tokens[i] + " " + segment[i].content + " <EOT>") for i in expected]
            for _, row in rows:
                ident = message_id(row["target"])
                if ident in base:
                    assert row == base[ident]
                else:  # only the opener is new, with an empty context
                    assert row["context"] == "" and row["target"] == render(tokens[0], segment[0].content)


# --- the real stages: sharding does not change the examples ------------------------------------


def _write_inputs(folder: Path, messages: list[Message], split_files: bool) -> None:
    """Seed JSONL files; with `split_files`, a channel's messages go to two files that interleave in time."""
    files: dict[str, list[str]] = {}
    for i, m in enumerate(messages):
        name = f"{m.channel[1:]}-{i % 2 if split_files else 0}.jsonl"
        record = {"username": m.username, "author_id": m.author_id, "content": m.content, "timestamp": m.ts, "channel": m.channel}
        files.setdefault(name, []).append(json.dumps(record, ensure_ascii=False))
    for name, lines in files.items():
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _run_stages(inputs: Path, work: Path, shard_messages: int, ws: WindowSettings, val_split: float):
    """read -> clusters -> segment -> speaker map and split -> window, as `prepare` wires them."""
    for sub in ("runs", "segments", "parts"):
        (work / sub).mkdir(parents=True)
    prep = PrepareSettings(
        on_error="fail", irc_channel=None, max_message_chars=2000, drop_bots=True, bot_usernames=frozenset(),
        scrub_pii=False, flood_min_authors=3, flood_window_seconds=120.0, flood_min_chars=10, gap_seconds=GAP,
        shard_messages=shard_messages, window=ws,
    )
    units = expand_inputs([str(inputs)])
    runs = [run for unit in units for run in read_stage(unit, prep, work).runs]
    clusters = plan_clusters(runs, prep.gap_seconds, prep.flood_window_seconds)
    results = [segment_stage(cluster, prep, work) for cluster in clusters]
    counts: Counter = Counter()
    for result in results:
        counts.update(result.author_counts)
    smap = build_speaker_map(counts, {}, 4)
    val_from = plan_split(results, val_split, "time", ws.seed, False)
    train, val, shards = [], [], 0
    for result in results:
        for shard in result.shards:
            shards += 1
            out = window_stage(shard, smap, {s: val_from[s] for s in shard.segments}, prep, work)
            train.append(Path(out.train_path).read_text(encoding="utf-8"))
            val.append(Path(out.val_path).read_text(encoding="utf-8"))
    return "".join(train), "".join(val), shards, smap, val_from, units


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(max_per_channel=30), window_settings(), st.booleans(), st.sampled_from([0.0, 0.2, 0.5]))
def test_sharding_does_not_change_the_examples(messages, ws, split_files, val_split):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = tmp / "inputs"
        inputs.mkdir()
        if not messages:
            return
        _write_inputs(inputs, messages, split_files)
        outputs = {}
        for shard_messages in (1, 7, 10**9):  # one segment per shard, a few, everything in one
            outputs[shard_messages] = _run_stages(inputs, tmp / f"work-{shard_messages}", shard_messages, ws, val_split)
        train, val, _, smap, val_from, units = outputs[10**9]
        assert outputs[1][:2] == outputs[7][:2] == (train, val)
        assert outputs[1][2] >= outputs[7][2] >= outputs[10**9][2]

        # And they are the examples of the unsharded stream, windowed in one go.
        read = [m for unit in units for m in read_unit(unit, ReadOptions())]
        expected_train, expected_val = [], []
        for channel, stream in sorted(by_channel(read).items()):
            for segment in split_segments(stream, GAP):
                tokens = [smap.token_for_author(m.author_id) for m in segment]
                for is_val, row in window_segment(segment, tokens, ws, val_from[segment_id(segment)]):
                    (expected_val if is_val else expected_train).append(row)
        parse = lambda text: [json.loads(line) for line in text.splitlines()]  # noqa: E731
        assert parse(train) == expected_train
        assert parse(val) == expected_val
        # The split by time: within a channel no val target precedes a train target.
        for channel in {m.channel for m in read}:
            train_ts = [r["ts"] for r in expected_train if r["channel"] == channel]
            val_ts = [r["ts"] for r in expected_val if r["channel"] == channel]
            if train_ts and val_ts:
                assert max(train_ts) <= min(val_ts)
