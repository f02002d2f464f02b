"""The embedded demo corpus: format, determinism, realism, noise, and above all learnability."""

from __future__ import annotations

import collections
import datetime as dt
import json
import re
import time
from pathlib import Path

import pytest

from fizzbot.data.demo import CHANNELS, PERSONAS, write_demo_corpus

HUMANS = [p.username for p in PERSONAS if not p.is_bot]
BOTS = [p.username for p in PERSONAS if p.is_bot]
URL_ONLY = re.compile(r"^https?://\S+$")
MENTION_ONLY = re.compile(r"^@[\w.\-]+$")
# fizzbot's default data.conversation_gap_minutes: a silence this long ends a conversation.
GAP_S = 60 * 60


def _load(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        assert isinstance(data, list)
        return data
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _ts(record: dict) -> float:
    return dt.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()


def _is_noise(record: dict) -> bool:
    content = record["content"]
    return bool(record.get("is_bot")) or not content.strip() or bool(URL_ONLY.match(content)) or bool(MENTION_ONLY.match(content))


def _floods(channels: dict[str, list[dict]]) -> list[tuple[str, int]]:
    """(channel, index) of each message that starts a flood: its text from 3+ users within a minute."""
    starts = []
    for channel, rows in channels.items():
        for i, row in enumerate(rows):
            if len(row["content"]) < 10:
                continue
            window = [r for r in rows[i : i + 10] if r["content"] == row["content"] and _ts(r) - _ts(row) <= 60]
            if len({r["username"] for r in window}) >= 3:
                starts.append((channel, i))
    return starts


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[dict, dict[str, list[dict]], float]:
    out = tmp_path_factory.mktemp("demo0")
    started = time.perf_counter()
    summary = write_demo_corpus(out, seed=0)
    elapsed = time.perf_counter() - started
    channels = {Path(f).stem: _load(Path(f)) for f in summary["files"]}
    return summary, channels, elapsed


def test_files_and_summary(corpus):
    summary, channels, elapsed = corpus
    names = sorted(Path(f).name for f in summary["files"])
    assert names == ["dev.jsonl", "gaming.jsonl", "general.jsonl", "music.json"]
    assert Path(summary["files"][0]).parent == Path(summary["output_dir"])
    assert summary["messages"] == {ch: len(rows) for ch, rows in channels.items()}
    assert summary["total_messages"] == sum(summary["messages"].values())
    assert 15_000 <= summary["total_messages"] <= 25_000, summary["messages"]
    assert summary["personas"] == [p.username for p in PERSONAS]
    assert summary["bots"] == BOTS
    assert summary["start"].startswith("2025-01-06T") and summary["end"].endswith("Z")
    assert 8 <= len(PERSONAS) <= 10
    assert elapsed < 5.0, f"generation took {elapsed:.2f}s"
    # Atomic writes leave no temporary files behind.
    assert not [p.name for p in Path(summary["output_dir"]).iterdir() if p.name.startswith(".")]


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    a = write_demo_corpus(tmp_path / "a", seed=7, days=5)
    b = write_demo_corpus(tmp_path / "b", seed=7, days=5)
    c = write_demo_corpus(tmp_path / "c", seed=8, days=5)
    for fa, fb, fc in zip(a["files"], b["files"], c["files"]):
        assert Path(fa).read_bytes() == Path(fb).read_bytes()
        assert Path(fa).name == Path(fc).name
    assert any(Path(fa).read_bytes() != Path(fc).read_bytes() for fa, fc in zip(a["files"], c["files"]))
    # Writing over an existing corpus gives the same bytes again.
    again = write_demo_corpus(tmp_path / "a", seed=7, days=5)
    assert [Path(f).read_bytes() for f in again["files"]] == [Path(f).read_bytes() for f in b["files"]]


def test_days_parameter(tmp_path):
    small = write_demo_corpus(tmp_path / "small", seed=0, days=2)
    assert 0 < small["total_messages"] < 2_500
    with pytest.raises(ValueError):
        write_demo_corpus(tmp_path / "none", days=0)


def test_every_record_is_well_formed_and_in_time_order(corpus):
    summary, channels, _ = corpus
    for path in summary["files"]:
        if path.endswith(".jsonl"):
            for line in Path(path).read_text(encoding="utf-8").splitlines():
                json.loads(line)  # every line is one JSON document
    for channel, rows in channels.items():
        previous = float("-inf")
        for row in rows:
            assert set(row) <= {"username", "content", "timestamp", "is_bot"}, row
            assert isinstance(row["username"], str) and row["username"].strip()
            assert isinstance(row["content"], str)
            assert isinstance(row["timestamp"], str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["timestamp"])
            if "is_bot" in row:
                assert row["is_bot"] is True and row["username"] in BOTS
            else:
                assert row["username"] in HUMANS
            ts = _ts(row)
            assert ts >= previous, f"{channel}: {row}"
            previous = ts


def test_channels_personas_and_their_haunts(corpus):
    _, channels, _ = corpus
    assert set(channels) == set(CHANNELS) and len(channels) >= 4
    speakers = collections.Counter()
    where = collections.defaultdict(collections.Counter)
    lena_hours = collections.Counter()
    for channel, rows in channels.items():
        people = {r["username"] for r in rows if not _is_noise(r)}
        assert len(people) >= 4, (channel, people)
        for row in rows:
            speakers[row["username"]] += 1
            where[row["username"]][channel] += 1
            if row["username"] == "lofi_lena":
                lena_hours[int(row["timestamp"][11:13])] += 1
    assert set(speakers) == {p.username for p in PERSONAS}
    # Personas keep to their channels and hours.
    assert set(where["lofi_lena"]) == {"music"}
    assert "gaming" not in where["byteberry"] and "gaming" not in where["prof_quill"]
    assert where["byteberry"].most_common(1)[0][0] == "dev"
    assert where["bigvolt"].most_common(1)[0][0] == "gaming"
    assert all(hour >= 18 or hour < 6 for hour in lena_hours), lena_hours


def test_styles(corpus):
    _, channels, _ = corpus
    said = collections.defaultdict(list)
    flood_texts = {channels[ch][i]["content"] for ch, i in _floods(channels)}
    for rows in channels.values():
        for row in rows:
            if not _is_noise(row) and len(row["content"]) > 12 and row["content"] not in flood_texts:
                said[row["username"]].append(row["content"])
    assert all(text == text.lower() for text in said["pixelpaws"])
    assert sum(text == text.upper() for text in said["bigvolt"]) / len(said["bigvolt"]) > 0.95
    formal = said["prof_quill"]
    assert sum(text[0].isupper() and text.rstrip().endswith((".", "?", "!")) for text in formal) / len(formal) > 0.95


def test_activity_is_skewed(corpus):
    _, channels, _ = corpus
    counts = collections.Counter(r["username"] for rows in channels.values() for r in rows if not _is_noise(r))
    ranked = [n for _, n in counts.most_common()]
    assert ranked[0] >= 4 * ranked[-1], counts
    assert sum(ranked[:3]) / sum(ranked) > 0.5, counts


def test_sessions_are_separated_by_long_silences(corpus):
    summary, channels, _ = corpus
    for channel, rows in channels.items():
        times = [_ts(r) for r in rows]
        gaps = [b - a for a, b in zip(times, times[1:])]
        long_gaps = [g for g in gaps if g >= GAP_S]
        # Several sessions a day, each ended by at least 90 minutes of silence.
        assert len(long_gaps) + 1 >= 1.5 * summary["days"], (channel, len(long_gaps))
        assert min(long_gaps) >= 90 * 60
        inside = sorted(g for g in gaps if g < GAP_S)
        assert inside[len(inside) // 2] <= 60, f"{channel}: median gap {inside[len(inside) // 2]}s"
        assert max(inside) <= 15 * 60


def test_noise_kinds_are_present_but_rare(corpus):
    _, channels, _ = corpus
    rows = [r for rs in channels.values() for r in rs]
    kinds = collections.Counter()
    for row in rows:
        if row.get("is_bot"):
            kinds["bot"] += 1
        elif not row["content"].strip():
            kinds["empty"] += 1
        elif URL_ONLY.match(row["content"]):
            kinds["url_only"] += 1
        elif MENTION_ONLY.match(row["content"]):
            kinds["mention_only"] += 1
    floods = len(_floods(channels))
    assert all(kinds[k] >= 10 for k in ("bot", "empty", "url_only", "mention_only")), kinds
    assert floods >= 5
    assert sum(kinds.values()) / len(rows) < 0.05, kinds


def test_turn_taking_habits(corpus):
    _, channels, _ = corpus
    after = collections.defaultdict(collections.Counter)
    for rows in channels.values():
        clean = [r for r in rows if not _is_noise(r)]
        for prev, nxt in zip(clean, clean[1:]):
            text = prev["content"]
            if text.startswith(("@kiwi_kat ", "kiwi: ", "kiwi_kat, ")):
                after["addressed kiwi"][nxt["username"]] += 1
            if prev["username"] == "byteberry" and text.endswith("?"):
                after["byteberry asks"][nxt["username"]] += 1
            if prev["username"] == "noodle_ninja":
                after["noodle_ninja"][nxt["username"]] += 1
    def share(key: str, who: str) -> float:
        return after[key][who] / sum(after[key].values())

    assert share("addressed kiwi", "kiwi_kat") > 0.85
    assert share("byteberry asks", "prof_quill") > 0.7
    assert after["noodle_ninja"].most_common(1)[0][0] == "waffle_wizard"


def _next_speaker_accuracy(channels: dict[str, list[dict]]) -> dict[str, float]:
    """A bigram "previous speaker -> next speaker" table fit on the first 80% of each channel's
    (clean) messages, evaluated on the last 20%, against majority-speaker baselines. Only
    transitions inside a conversation count (no silence of GAP_S or more between the two)."""
    train: list[tuple[str, str, str]] = []
    test: list[tuple[str, str, str]] = []
    overall = collections.Counter()
    for channel, rows in channels.items():
        clean = [r for r in rows if not _is_noise(r)]
        split = int(len(clean) * 0.8)
        overall.update(r["username"] for r in clean[:split])
        for i in range(1, len(clean)):
            if _ts(clean[i]) - _ts(clean[i - 1]) < GAP_S:
                row = (channel, clean[i - 1]["username"], clean[i]["username"])
                (train if i < split else test).append(row)
    table = collections.defaultdict(collections.Counter)
    per_channel = collections.defaultdict(collections.Counter)
    for channel, prev, nxt in train:
        table[channel, prev][nxt] += 1
        per_channel[channel][nxt] += 1

    def best(counter: collections.Counter) -> str:
        return min(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0]

    majority = best(overall)
    hits = {"bigram": 0, "channel_majority": 0, "global_majority": 0}
    for channel, prev, nxt in test:
        guess = best(table[channel, prev]) if table[channel, prev] else best(per_channel[channel])
        hits["bigram"] += guess == nxt
        hits["channel_majority"] += best(per_channel[channel]) == nxt
        hits["global_majority"] += majority == nxt
    return {k: v / len(test) for k, v in hits.items()} | {"test_transitions": len(test)}


@pytest.mark.parametrize("seed", [0, 1])
def test_next_speaker_is_predictable(seed, corpus, tmp_path):
    if seed == 0:
        channels = corpus[1]
    else:
        summary = write_demo_corpus(tmp_path, seed=seed)
        channels = {Path(f).stem: _load(Path(f)) for f in summary["files"]}
    result = _next_speaker_accuracy(channels)
    print(f"seed {seed}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    assert result["test_transitions"] > 2_000
    # Well above the majority speaker, even the per-channel one (a stronger baseline).
    assert result["bigram"] >= 1.5 * result["channel_majority"], result
    assert result["bigram"] >= 2.0 * result["global_majority"], result


def test_readers_and_cleaning_accept_it(corpus):
    """fizzbot's own seed reader reads every file, and its cleaning drops every kind of noise."""
    from fizzbot.data.clean import FloodFilter, drop_reason
    from fizzbot.data.formats import expand_inputs, read_unit
    from fizzbot.data.messages import ReadOptions

    summary, channels, _ = corpus
    units = expand_inputs([summary["output_dir"]])
    assert sorted((Path(u.path).name, u.format) for u in units) == sorted((Path(f).name, "seed") for f in summary["files"])
    reasons = collections.Counter()
    total = 0
    for unit in units:
        messages = list(read_unit(unit, ReadOptions()))
        assert len(messages) == len(channels[Path(unit.path).stem])
        total += len(messages)
        kept = []
        for message in messages:
            reason = drop_reason(message, drop_bots=True, bot_usernames=frozenset())
            if reason:
                reasons[reason] += 1
            else:
                kept.append(message)
        kept.sort(key=lambda m: m.sort_key())
        reasons["flood"] += sum(FloodFilter(min_authors=3, window_s=120.0).flags(kept))
    assert all(reasons[k] > 0 for k in ("bot", "empty", "url_only", "mention_only", "flood")), reasons
    assert sum(reasons.values()) / total < 0.05, reasons
