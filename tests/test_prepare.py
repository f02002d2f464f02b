"""`prepare` end to end: outputs, the split, stats, Ray against one process, the real Ubuntu logs, bad
input through `prepare` and the CLI, and atomic output (a failure or a kill never leaves a folder
that looks complete)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fizzbot.cli import main
from fizzbot.config import DataConfig
from fizzbot.data import pipeline
from fizzbot.errors import InputError
from fizzbot.data.pipeline import prepare
from fizzbot.chat.speakers import OTHERS_NAME, SpeakerMap

OUTPUT_FILES = {"train.jsonl", "val.jsonl", "speaker_map.json", "stats.json", "report.png", ".fizzbot"}
T0 = 1_700_000_000  # epoch seconds
AUTHORS = ("alice", "bob", "carol", "dave", "erin")


# --- helpers --------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(n: int, *, start: float = T0, step: float = 30, authors=AUTHORS, tag: str = "") -> list[dict]:
    """n ordinary messages, distinct texts and timestamps, several authors."""
    return [
        {"username": authors[(i * 7) % len(authors)], "content": f"{tag} message {i} about the weather and more",
         "timestamp": start + i * step}
        for i in range(n)
    ]


def corpus(folder: Path) -> Path:
    """Three seed channels: two conversations in `general` (a long silence between), files split."""
    write_jsonl(folder / "general.jsonl", chat(40, tag="g") + chat(30, start=T0 + 86400, tag="g2"))
    write_jsonl(folder / "random.jsonl", chat(50, start=T0 + 10, step=45, tag="r"))
    write_jsonl(folder / "dev.jsonl", chat(25, start=T0 + 5, step=60, authors=AUTHORS[:3], tag="d"))
    return folder


def config(inputs, output: Path, **fields) -> DataConfig:
    return DataConfig(inputs=[str(p) for p in (inputs if isinstance(inputs, list) else [inputs])], output=str(output), **fields)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def leftovers(output: Path) -> list[str]:
    """Hidden partial folders beside `output`."""
    return sorted(p.name for p in output.parent.glob(f".{output.name}.partial-*"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# --- outputs and the split -----------------------------------------------------------------------


def test_outputs_rows_and_no_val_target_in_train(tmp_path):
    out = tmp_path / "prepared"
    summary = prepare(config(corpus(tmp_path / "in"), out, val_split=0.2), use_ray=False)
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    assert leftovers(out) == []
    train, val = rows(out / "train.jsonl"), rows(out / "val.jsonl")
    assert train and val
    for row in train + val:
        assert isinstance(row["context"], str) and isinstance(row["target"], str)
        assert row["channel"] in {"general", "random", "dev"}
        assert row["target"].startswith(row["speaker"] + " ") and row["target"].endswith(" <EOT>")
    train_keys = {(r["channel"], r["ts"], r["target"]) for r in train}
    val_keys = {(r["channel"], r["ts"], r["target"]) for r in val}
    assert not train_keys & val_keys
    assert len(train_keys) == len(train) and len(val_keys) == len(val)
    # 145 messages in 4 segments, every one a target: each segment's opener with an empty context.
    assert summary.messages_read == summary.messages_kept == 145
    assert summary.train_examples + summary.val_examples == 145
    assert (summary.train_examples, summary.val_examples) == (len(train), len(val))
    assert sum(r["context"] == "" for r in train + val) == 4
    smap = SpeakerMap.load(out / "speaker_map.json")
    assert set(smap.token_to_username().values()) == set(AUTHORS) | {OTHERS_NAME}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["totals"]["examples"] == {"train": len(train), "val": len(val)}
    assert stats["channels"]["general"]["segments"] == 2


def test_val_split_by_time_holds_out_each_channels_latest(tmp_path):
    out = tmp_path / "prepared"
    prepare(config(corpus(tmp_path / "in"), out, val_split=0.2, val_split_by="time"), use_ray=False, report=False)
    train, val = rows(out / "train.jsonl"), rows(out / "val.jsonl")
    for channel in ("general", "random", "dev"):
        train_ts = [r["ts"] for r in train if r["channel"] == channel]
        val_ts = [r["ts"] for r in val if r["channel"] == channel]
        assert train_ts and val_ts, channel
        assert min(val_ts) > max(train_ts), channel
    # About a fifth of each channel's messages.
    assert sum(r["channel"] == "random" for r in val) == 10


def test_val_split_by_channel_holds_out_whole_channels(tmp_path):
    out = tmp_path / "prepared"
    prepare(config(corpus(tmp_path / "in"), out, val_split=0.2, val_split_by="channel"), use_ray=False, report=False)
    train, val = rows(out / "train.jsonl"), rows(out / "val.jsonl")
    train_channels, val_channels = {r["channel"] for r in train}, {r["channel"] for r in val}
    assert val_channels and train_channels
    assert not train_channels & val_channels
    assert train_channels | val_channels == {"general", "random", "dev"}


def test_val_split_by_channel_needs_two_channels(tmp_path):
    write_jsonl(tmp_path / "in" / "only.jsonl", chat(20))
    out = tmp_path / "prepared"
    with pytest.raises(InputError, match="needs at least two channels"):
        prepare(config(tmp_path / "in", out, val_split_by="channel"), use_ray=False, report=False)
    assert not out.exists() and leftovers(out) == []


def test_val_jsonl_replaces_the_split(tmp_path):
    external = [{"context": "<S0> hi <EOT>\n", "target": "<S1> hello <EOT>", "channel": "x"},
                {"context": "", "target": "<S0> ünïcode <EOT>"}]
    val_file = write_jsonl(tmp_path / "val_rows.jsonl", external)
    out = tmp_path / "prepared"
    summary = prepare(config(corpus(tmp_path / "in"), out, val_split=0.3, val_jsonl=str(val_file)), use_ray=False, report=False)
    assert rows(out / "val.jsonl") == external
    assert len(rows(out / "train.jsonl")) == 145  # nothing held out of the training data
    assert summary.val_examples == 2
    assert json.loads((out / "stats.json").read_text())["totals"]["examples"]["val"] == 2


def test_bad_val_jsonl_is_named_by_line(tmp_path):
    val_file = tmp_path / "val_rows.jsonl"
    val_file.write_text('{"context": "", "target": "<S0> a <EOT>"}\n{"context": "", "target": 3}\n', encoding="utf-8")
    out = tmp_path / "prepared"
    with pytest.raises(InputError, match=r"val_rows\.jsonl:2: target: missing or not a string"):
        prepare(config(corpus(tmp_path / "in"), out, val_jsonl=str(val_file)), use_ray=False, report=False)
    assert not out.exists() and leftovers(out) == []


def test_stats_count_each_filter_per_channel(tmp_path):
    spam = "FREE ops and a pony in #elsewhere, join now"
    general = chat(20, tag="g") + [
        {"username": "alice", "content": "", "timestamp": T0 + 1},
        {"username": "bob", "content": "   ", "timestamp": T0 + 2},
        {"username": "bob", "content": "https://example.com/x", "timestamp": T0 + 3},
        {"username": "carol", "content": "@alice", "timestamp": T0 + 4},
        {"username": "carol", "content": "@alice @bob", "timestamp": T0 + 5},
        {"username": "helper", "content": "I am a bot", "timestamp": T0 + 6, "is_bot": True},
        {"username": "WeatherBot", "content": "Sunny, 21 degrees", "timestamp": T0 + 7},
        {"username": "alice", "content": spam, "timestamp": T0 + 100},
        {"username": "bob", "content": spam, "timestamp": T0 + 130},
        {"username": "carol", "content": spam, "timestamp": T0 + 160},
        {"username": "dave", "content": "lol", "timestamp": T0 + 161},
        {"username": "erin", "content": "lol", "timestamp": T0 + 162},
        {"username": "alice", "content": "lol", "timestamp": T0 + 163},
    ]
    write_jsonl(tmp_path / "in" / "general.jsonl", sorted(general, key=lambda r: r["timestamp"]))
    write_jsonl(tmp_path / "in" / "random.jsonl", chat(10, tag="r") + [{"username": "x", "content": "www.example.org", "timestamp": T0}])
    (tmp_path / "in" / "irc" / "2023-11-14.log").parent.mkdir(parents=True)
    (tmp_path / "in" / "irc" / "2023-11-14.log").write_text(
        "=== alice [a@host]  has joined #Ubuntu-Dev\n"
        "[10:00] <alice> hello there everyone\n"
        "[10:01] <bob> alice: hi, how are you\n"
        "[10:01] <ubotu> Factoid: sudo is a command\n"
        "[10:02] <alice> bob:\n"
        "=== bob is now known as bobby\n"
        "[10:03] <bobby> fine thanks, and you?\n",
        encoding="utf-8",
    )
    out = tmp_path / "prepared"
    prepare(config(tmp_path / "in", out, bot_usernames=["weatherbot"]), use_ray=False, report=False)
    stats = json.loads((out / "stats.json").read_text())
    zero = dict.fromkeys(("system", "bot", "attachment", "empty", "url_only", "mention_only", "duplicate", "flood"), 0)
    assert stats["channels"]["general"]["dropped"] == {**zero, "bot": 2, "empty": 2, "url_only": 1, "mention_only": 2, "flood": 3}
    assert stats["channels"]["general"]["read"] == 33
    assert stats["channels"]["general"]["kept"] == 23  # the 20 chats and the three "lol"s
    assert stats["channels"]["random"]["dropped"] == {**zero, "url_only": 1}
    assert (stats["channels"]["random"]["read"], stats["channels"]["random"]["kept"]) == (11, 10)
    irc = stats["channels"]["#ubuntu-dev"]
    assert irc["format"] == "irc"
    assert irc["dropped"] == {**zero, "system": 2, "bot": 1, "mention_only": 1}
    assert (irc["read"], irc["kept"]) == (7, 3)
    assert stats["totals"]["dropped"] == {**zero, "system": 2, "bot": 3, "empty": 2, "url_only": 2, "mention_only": 3, "flood": 3}
    assert stats["formats"] == {"irc": 1, "seed": 2}
    assert stats["totals"]["read"] == 33 + 11 + 7
    for name, channel in stats["channels"].items():
        assert channel["read"] == channel["kept"] + sum(channel["dropped"].values()), name
    targets = " ".join(r["target"] for r in rows(out / "train.jsonl") + rows(out / "val.jsonl"))
    assert "pony" not in targets and "Factoid" not in targets and "Sunny" not in targets


def test_pii_is_scrubbed_through_the_pipeline(tmp_path):
    messages = chat(5) + [{"username": "bob", "content": "write to bob@example.com or call +1 555-123-4567 from 10.0.0.7",
                           "timestamp": T0 + 1000}]
    write_jsonl(tmp_path / "in" / "c.jsonl", messages)
    out = tmp_path / "prepared"
    prepare(config(tmp_path / "in", out, scrub_pii=True, val_split=0), use_ray=False, report=False)
    text = (out / "train.jsonl").read_text()
    assert "write to [email] or call [phone] from [ip]" in text
    assert "example.com" not in text and "10.0.0.7" not in text


# --- Ray and one process: the same bytes ----------------------------------------------------------


@pytest.mark.slow
def test_ray_and_plain_give_identical_output(tmp_path, ray_local):
    inputs = corpus(tmp_path / "in")
    # More units and clusters: a channel over two files that interleave in time, a late third one.
    write_jsonl(inputs / "ops-a.jsonl", [dict(r, channel="ops") for r in chat(30, tag="o")[::2]])
    write_jsonl(inputs / "ops-b.jsonl", [dict(r, channel="ops") for r in chat(30, tag="o")[1::2]])
    write_jsonl(inputs / "ops-c.jsonl", [dict(r, channel="ops") for r in chat(30, start=T0 + 7 * 86400, tag="late")])
    common = dict(val_split=0.15, max_speakers=4, shard_messages=100, seed=7)
    plain = prepare(config(inputs, tmp_path / "plain", **common), use_ray=False, report=False)
    with_ray = prepare(config(inputs, tmp_path / "ray", **common), use_ray=True, report=False)
    for name in ("train.jsonl", "val.jsonl", "speaker_map.json"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name
    stats = [json.loads((tmp_path / d / "stats.json").read_text()) for d in ("plain", "ray")]
    for s in stats:
        s.pop("seconds"), s.pop("config")
    assert stats[0] == stats[1]
    assert plain.train_examples == with_ray.train_examples > 0
    assert stats[0]["channels"]["ops"]["segments"] == 2


@pytest.mark.slow
def test_ray_workers_get_absolute_paths_and_clean_errors(tmp_path, ray_local, monkeypatch):
    """Ray's workers run where Ray started, not in our working directory; their errors arrive intact."""
    corpus(tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    summary = prepare(config(Path("in"), Path("out"), val_split=0.1), use_ray=True, report=False)
    assert summary.train_examples > 0 and (tmp_path / "out" / "train.jsonl").is_file()

    bad = tmp_path / "bad"
    write_jsonl(bad / "c.jsonl", chat(3))
    with open(bad / "c.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"username": "a", "content": "x", "timestamp": \n')
    with pytest.raises(InputError, match=r"c\.jsonl:4: malformed JSON"):
        prepare(config(Path("bad"), Path("out2"), on_error="fail"), use_ray=True, report=False)
    assert not (tmp_path / "out2").exists() and leftovers(tmp_path / "out2") == []


# --- the real Ubuntu logs ----------------------------------------------------------------------------

BOT_HEAVY_LOGS = ("2007-01-12.train-c.log", "2008-02-14.train-c.log", "2009-01-05.train-a.log",
                  "2010-03-20.train-c.log", "2011-11-24.train-c.log")


@pytest.mark.slow
def test_cli_prepare_on_ubuntu_logs_with_ray(tmp_path, ray_local, ubuntu_logs, capsys):
    logs = [ubuntu_logs / name for name in BOT_HEAVY_LOGS]
    out = tmp_path / "ubuntu"
    args = ["prepare", "--output", str(out)]
    for log in logs:
        args += ["--input", str(log)]
    assert main(args + ["data.max_speakers=32", "data.val_split=0.1"]) == 0
    assert "prepared" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES

    lines = [line for log in logs for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    said = sum(line.startswith("[") and "] <" in line[:10] for line in lines)
    bot_lines = sum(any(f"] <{b}>" in line for b in ("ubotu", "ubottu")) for line in lines)
    stats = json.loads((out / "stats.json").read_text())
    assert list(stats["channels"]) == ["#ubuntu"]
    totals = stats["totals"]
    assert said <= totals["read"] <= len(lines)
    assert 0.6 * said <= totals["kept"] <= said
    assert totals["dropped"]["bot"] >= bot_lines > 50
    assert totals["dropped"]["system"] > 0
    # Every kept message is a target (each segment's first as an opener).
    assert totals["examples"]["train"] + totals["examples"]["val"] == totals["kept"]
    assert totals["segments"] >= len(logs)  # the logs are years apart

    smap = SpeakerMap.load(out / "speaker_map.json")
    assert len(smap.tokens) == 32 and smap.other_token == "<S31>" and len(smap.speakers) == 31
    assert smap.other_authors == stats["speakers"]["authors"] - 31 > 100
    assert not {s.username.lower() for s in smap.speakers} & {"ubotu", "ubottu", "chanserv"}
    examples = rows(out / "train.jsonl") + rows(out / "val.jsonl")
    assert len(examples) == totals["examples"]["train"] + totals["examples"]["val"]
    assert {r["channel"] for r in examples} == {"#ubuntu"}
    assert {r["speaker"] for r in examples} <= set(smap.tokens)
    # Everyone past the 31 most active speaks as the shared token.
    shared = sum(r["speaker"] == "<S31>" for r in examples)
    assert 0 < shared <= smap.other_messages


# --- bad input ---------------------------------------------------------------------------------------


GOOD = chat(6, tag="ok")


def _malformed(folder: Path) -> tuple[str, str]:
    path = folder / "c.jsonl"
    path.write_text(json.dumps(GOOD[0]) + '\n{"username": "a", "content": "x", "timestamp": \n' + json.dumps(GOOD[1]) + "\n")
    return str(path), r"c\.jsonl:2: malformed JSON"


def _missing_field(folder: Path) -> tuple[str, str]:
    path = write_jsonl(folder / "c.jsonl", [GOOD[0], GOOD[1], {"username": "a", "content": "no time"}])
    return str(path), r"c\.jsonl:3: timestamp: missing"


def _wrong_type(folder: Path) -> tuple[str, str]:
    path = write_jsonl(folder / "c.jsonl", [GOOD[0], {"username": "a", "content": 42, "timestamp": T0}, GOOD[1]])
    return str(path), r"c\.jsonl:2: content: expected a string, got int"


def _not_utf8(folder: Path) -> tuple[str, str]:
    path = folder / "c.jsonl"
    path.write_bytes(json.dumps(GOOD[0]).encode() + b'\n{"username": "caf\xe9", "content": "x", "timestamp": 1}\n')
    return str(path), r"c\.jsonl:2: not UTF-8"


def _empty(folder: Path) -> tuple[str, str]:
    path = folder / "c.jsonl"
    path.write_bytes(b"")
    return str(path), r"c\.jsonl: empty file"


def _huge_line(folder: Path) -> tuple[str, str]:
    path = folder / "c.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write('{"username": "a", "timestamp": 1, "content": "' + "x" * 50_000_000 + '"}\n')
    return str(path), r"c\.jsonl:1: line of 50,000,0\d\d bytes is over the 1,048,576-byte limit"


def _unknown_format(folder: Path) -> tuple[str, str]:
    path = folder / "c.dat"
    path.write_text("Dear diary, today nothing happened.\nThe end.\n")
    return str(path), r"c\.dat:1: unknown export format; name it with data\.format"


BAD_INPUTS = {
    "malformed_json": _malformed,
    "missing_field": _missing_field,
    "wrong_type": _wrong_type,
    "not_utf8": _not_utf8,
    "empty_file": _empty,
    "50MB_line": _huge_line,
    "unknown_format": _unknown_format,
}


# The cases that are a file not of its format at all (always an error); the others are one bad record
# in a file of good ones (skipped under the default data.on_error=skip_messages).
FILE_CASES = {
    "empty_file": r"c\.jsonl: empty file",
    "50MB_line": r"c\.jsonl:1: not a seed file: no record could be read \(the first: line of 50,000,0\d\d bytes",
    "unknown_format": r"c\.dat:1: unknown export format; name it with data\.format",
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_fails_cleanly_and_writes_nothing(tmp_path, capsys, case):
    """data.on_error=fail: any bad record or file stops the run with one line, before anything is written."""
    folder = tmp_path / "in"
    write_jsonl(folder / "a_good.jsonl", chat(10))
    path, expected = BAD_INPUTS[case](folder)
    out = tmp_path / "prepared"

    with pytest.raises(InputError, match=expected) as failed:
        prepare(config(folder, out, on_error="fail"), use_ray=False, report=False)
    assert failed.value.path.endswith(Path(path).name)
    assert not out.exists() and leftovers(out) == []

    # The CLI: one line naming file and line (or field), exit code 2, nothing written.
    capsys.readouterr()
    assert main(["prepare", "--no-ray", "--input", str(folder), "--output", str(out), "data.on_error=fail"]) == 2
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if "error" in line]
    assert line.startswith("fizzbot prepare: error: ") and re.search(expected, line)
    assert "Traceback" not in err
    assert not out.exists() and leftovers(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_by_default_bad_records_are_skipped_and_files_not_of_the_format_fail(tmp_path, capsys, case):
    folder = tmp_path / "in"
    write_jsonl(folder / "a_good.jsonl", chat(10))
    path, expected = BAD_INPUTS[case](folder)
    out = tmp_path / "prepared"
    if case in FILE_CASES:
        with pytest.raises(InputError, match=FILE_CASES[case]):
            prepare(config(folder, out), use_ray=False, report=False)
        assert not out.exists() and leftovers(out) == []
        return
    summary = prepare(config(folder, out, val_split=0), use_ray=False, report=False)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["config"]["on_error"] == "skip_messages"
    assert stats["errors"]["skipped"] == 1
    [(kind, count)] = stats["errors"]["by_kind"].items()
    assert count == 1 and kind == stats["errors"]["samples"][0]["kind"]
    assert summary.messages_read == 10 + {"malformed_json": 2, "missing_field": 2, "wrong_type": 2, "not_utf8": 1}[case]
    # The printed summary says what was skipped.
    assert f"skipped 1 record that could not be read (1 {kind})" in capsys.readouterr().err


def test_skipped_records_are_counted_per_kind_with_samples_of_each(tmp_path):
    lines = [json.dumps(r) for r in chat(12)]
    lines[2] = '{"username": "a", "content": "x"}'  # no timestamp
    lines[4] = '{"username": "a", "content": "x"}'
    lines[6] = '{"username": "a", "content": "x"}'
    lines[8] = '{"username": "a", "content": "x"}'
    lines[9] = '{"username": "a", "content": 3, "timestamp": 1}'
    lines[10] = "not json"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "c.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare(config(tmp_path / "in", tmp_path / "out", val_split=0), use_ray=False, report=False)
    errors = json.loads((tmp_path / "out" / "stats.json").read_text())["errors"]
    assert errors["skipped"] == 6
    assert errors["by_kind"] == {"timestamp: missing": 4, "content: expected a string, got int": 1, "malformed JSON": 1}
    # At most three samples of a kind, so the rare kinds show too.
    assert [s["kind"] for s in errors["samples"]] == ["timestamp: missing"] * 3 + ["content: expected a string, got int", "malformed JSON"]
    assert [s["line"] for s in errors["samples"]] == [3, 5, 7, 10, 11]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_skipped_counted_and_sampled(tmp_path, case):
    folder = tmp_path / "in"
    write_jsonl(folder / "a_good.jsonl", chat(10))
    path, expected = BAD_INPUTS[case](folder)
    out = tmp_path / "prepared"
    summary = prepare(config(folder, out, on_error="skip", val_split=0), use_ray=False, report=False)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["errors"]["skipped"] == 1
    [sample] = stats["errors"]["samples"]
    assert sample["path"] == str(Path(path).absolute())
    # The sample says what the error said: file, line or field, reason.
    said = str(InputError(sample["error"], path=sample["path"], line=sample["line"], field=sample["field"]))
    assert re.search(FILE_CASES.get(case, expected), said)
    # Every good row kept: the good file's ten, and the bad file's good lines.
    good_in_bad_file = {"malformed_json": 2, "missing_field": 2, "wrong_type": 2, "not_utf8": 1}.get(case, 0)
    assert summary.messages_read == 10 + good_in_bad_file
    assert summary.messages_kept == 10 + good_in_bad_file


def test_unknown_format_name_is_a_config_error(tmp_path, capsys):
    write_jsonl(tmp_path / "in" / "c.jsonl", chat(5))
    assert main(["prepare", "--no-ray", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--format", "myspace"]) == 2
    err = capsys.readouterr().err
    assert "data.format" in err and "myspace" in err
    assert not (tmp_path / "out").exists()


def test_missing_input_is_an_error_even_when_skipping(tmp_path, capsys):
    args = ["prepare", "--no-ray", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out"), "data.on_error=skip"]
    assert main(args) == 2
    assert f"{tmp_path / 'nope'}: no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- atomic output ---------------------------------------------------------------------------------


def test_a_failure_midway_keeps_the_old_output(tmp_path, monkeypatch):
    inputs = corpus(tmp_path / "in")
    out = tmp_path / "prepared"
    prepare(config(inputs, out), use_ray=False)
    before = snapshot(out)

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pipeline, "window_stage", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare(config(inputs, out, seed=1), use_ray=False)
    assert snapshot(out) == before
    assert leftovers(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "prepared"]


def test_a_successful_run_replaces_its_own_old_output_whole(tmp_path):
    inputs = corpus(tmp_path / "in")
    out = tmp_path / "prepared"
    prepare(config(inputs, out), use_ray=False, report=False)
    assert json.loads((out / ".fizzbot").read_text())["files"] == sorted(OUTPUT_FILES - {"report.png", ".fizzbot"})
    prepare(config(inputs, out, seed=3), use_ray=False, report=False)
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES - {"report.png"}
    assert json.loads((out / "stats.json").read_text())["config"]["seed"] == 3
    assert leftovers(out) == []


# --- the user's files are sacred -------------------------------------------------------------------


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden partial folders of fizzbot's aside), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_output_pointed_at_the_inputs_deletes_nothing(tmp_path, monkeypatch, capsys):
    inputs = corpus(tmp_path / "exports")
    (inputs / "notes.md").write_text("my notes")
    before = tree(tmp_path)
    monkeypatch.chdir(inputs)
    cases = [
        (["--input", ".", "--output", "."], "is one of the inputs"),
        (["--input", "general.jsonl", "--output", "."], "holds the input general.jsonl"),
        (["--input", str(inputs), "--output", str(tmp_path)], f"holds the input {inputs}"),
        (["--input", str(inputs / "dev.jsonl"), "--output", str(inputs)], "holds the input"),
    ]
    for args, expected in cases:
        assert main(["prepare", "--no-ray", *args]) == 2, args
        [line] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert line.startswith("fizzbot prepare: error: ") and "data.output: " in line and expected in line, line
    assert tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports"]


def test_output_that_is_a_folder_of_the_users_is_refused(tmp_path):
    inputs = corpus(tmp_path / "in")
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "thesis.tex").write_text("years of work")
    before = tree(tmp_path)
    with pytest.raises(InputError, match=r"mine: data\.output: is a folder fizzbot did not write \(1 entries, no \.fizzbot marker\)"):
        prepare(config(inputs, mine), use_ray=False, report=False)
    a_file = tmp_path / "mine" / "sub" / "thesis.tex"
    with pytest.raises(InputError, match=r"thesis\.tex: data\.output: exists and is not a folder"):
        prepare(config(inputs, a_file), use_ray=False, report=False)
    # fizzbot's own folder with something of the user's put into it is refused too.
    out = tmp_path / "prepared"
    prepare(config(inputs, out), use_ray=False, report=False)
    (out / "keep-me.txt").write_text("mine")
    with pytest.raises(InputError, match=r"prepared: data\.output: holds 'keep-me\.txt', which fizzbot did not write"):
        prepare(config(inputs, out, seed=4), use_ray=False, report=False)
    assert (out / "keep-me.txt").read_text() == "mine"
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("prepared")} == before
    # An empty folder is fine.
    (tmp_path / "empty").mkdir()
    prepare(config(inputs, tmp_path / "empty"), use_ray=False, report=False)
    assert (tmp_path / "empty" / "train.jsonl").is_file()


def test_a_prepared_folder_inside_the_inputs_is_not_read_as_input(tmp_path):
    inputs = corpus(tmp_path / "in")
    first = prepare(config(inputs, inputs / "prepared"), use_ray=False, report=False)
    again = prepare(config(inputs, inputs / "prepared", seed=1), use_ray=False, report=False)
    assert first.messages_read == again.messages_read == 145
    assert json.loads((inputs / "prepared" / "stats.json").read_text())["formats"] == {"seed": 3}


# --- duplicates, attachments, warnings ---------------------------------------------------------------


def test_overlapping_exports_are_read_once(tmp_path):
    """Two exports of one channel overlapping in time: the common messages count once, by id or by
    author, time and text; a repeated line within one file stays two messages."""
    rows = chat(40, tag="o")
    for i, row in enumerate(rows):
        row["channel"] = "ops"
    with_ids = [dict(r, id=f"m{i}") for i, r in enumerate(rows)]
    write_jsonl(tmp_path / "in" / "ops-export-1.jsonl", with_ids[:30])
    write_jsonl(tmp_path / "in" / "ops-export-2.jsonl", with_ids[20:])  # 10 in common
    # Without ids: author, time and text; "lol" twice in one file at one time is two messages.
    lol = {"username": "alice", "content": "lol", "timestamp": T0 + 5000, "channel": "irc"}
    write_jsonl(tmp_path / "in" / "irc-a.jsonl", chat(20, start=T0 + 4000, tag="i") + [lol, lol])
    write_jsonl(tmp_path / "in" / "irc-b.jsonl", [dict(r, channel="irc") for r in chat(20, start=T0 + 4000, tag="i")][5:] + [lol])
    for name in ("irc-a.jsonl",):
        path = tmp_path / "in" / name
        path.write_text("".join(json.dumps(dict(json.loads(l), channel="irc")) + "\n" for l in path.read_text().splitlines()))
    out = tmp_path / "out"
    prepare(config(tmp_path / "in", out, val_split=0), use_ray=False, report=False)
    stats = json.loads((out / "stats.json").read_text())
    ops, irc = stats["channels"]["ops"], stats["channels"]["irc"]
    assert (ops["read"], ops["dropped"]["duplicate"], ops["kept"]) == (50, 10, 40)
    assert (irc["read"], irc["dropped"]["duplicate"], irc["kept"]) == (22 + 16, 16, 22)
    assert stats["totals"]["dropped"]["duplicate"] == 26
    targets = [r["target"] for r in rows_of(out)]
    assert len(targets) == len(set(targets)) + 1  # only the two "lol"s of one file repeat


def rows_of(out: Path) -> list[dict]:
    return rows(out / "train.jsonl") + rows(out / "val.jsonl")


def test_attachment_only_messages_are_kept_as_placeholders_or_dropped(tmp_path):
    export = {
        "guild": {"id": "1", "name": "G"}, "channel": {"id": "5", "type": "GuildTextChat", "name": "pics"},
        "messages": [
            {"id": str(i), "type": "Default", "timestamp": f"2021-03-01T10:{i:02d}:00+00:00", "content": text,
             "author": {"id": str(100 + i % 3), "name": f"user{i % 3}", "isBot": False},
             "attachments": attachments, "stickers": stickers, "embeds": []}
            for i, (text, attachments, stickers) in enumerate([
                ("look at this", [], []),
                ("", [{"id": "9", "url": "https://cdn/x.png", "fileName": "x.png", "fileSizeBytes": 10}], []),
                ("nice!", [], []),
                ("", [], [{"id": "7", "name": "wave", "format": "Apng"}]),
                ("", [{"id": "8", "url": "https://cdn/notes.pdf", "fileName": "notes.pdf", "fileSizeBytes": 10}], []),
                ("thanks, got it", [], []),
            ])
        ],
    }
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "pics.json").write_text(json.dumps(export), encoding="utf-8")
    out = tmp_path / "out"
    prepare(config(tmp_path / "in", out, val_split=0, attachment_placeholders={"sticker": "<sticker>"}),
            use_ray=False, report=False)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["totals"]["attachment_placeholders"] == 3
    assert (stats["totals"]["kept"], stats["totals"]["dropped"]["attachment"]) == (6, 0)
    said = [r["target"].split(" ", 1)[1].removesuffix(" <EOT>") for r in rows_of(out)]
    # Every message is a target, the opener included (data.openers).
    assert said == ["look at this", "[image]", "nice!", "<sticker>", "[file]", "thanks, got it"]

    dropped = tmp_path / "dropped"
    prepare(config(tmp_path / "in", dropped, val_split=0, keep_attachments=False), use_ray=False, report=False)
    stats = json.loads((dropped / "stats.json").read_text())
    assert (stats["totals"]["kept"], stats["totals"]["dropped"]["attachment"], stats["totals"]["attachment_placeholders"]) == (3, 3, 0)


def test_a_log_with_no_date_anywhere_is_read_with_a_warning(tmp_path, capsys):
    (tmp_path / "in" / "notes").mkdir(parents=True)
    (tmp_path / "in" / "notes" / "#chan.log").write_text(
        "".join(f"[10:{i:02d}] <{AUTHORS[i % 3]}> message number {i}\n" for i in range(10)), encoding="utf-8")
    out = tmp_path / "out"
    prepare(config(tmp_path / "in", out), use_ray=False, report=False)
    warnings = json.loads((out / "stats.json").read_text())["warnings"]
    assert warnings["count"] == 1
    assert warnings["samples"][0]["error"].startswith("no date in the log, its file name or its folders")
    assert "warning: " in capsys.readouterr().err


def test_a_killed_run_leaves_only_a_hidden_partial_folder(tmp_path):
    # Big enough to take a few seconds in one process: 30 channels of 4,000 messages.
    inputs = tmp_path / "in"
    for c in range(30):
        write_jsonl(inputs / f"chan{c:02d}.jsonl", chat(4000, start=T0 + c, step=20, tag=f"c{c}"))
    small = tmp_path / "small"
    write_jsonl(small / "c.jsonl", chat(20))
    out = tmp_path / "prepared"
    prepare(config(small, out), use_ray=False, report=False)
    before = snapshot(out)

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fizzbot.cli", "prepare", "--no-ray", "--input", str(inputs), "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while not leftovers(out):
            assert proc.poll() is None, "prepare ended before it could be killed"
            assert time.monotonic() < deadline, "prepare never started writing"
            time.sleep(0.005)
        time.sleep(0.3)  # well inside the stages
        assert proc.poll() is None, "prepare finished before it could be killed: make the input bigger"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # The old output is untouched; the half-built one is hidden, and nothing else appeared.
    assert snapshot(out) == before
    [partial] = leftovers(out)
    assert partial.startswith(".prepared.partial-")
    assert (tmp_path / partial / "work").is_dir()  # killed inside the stages
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["in", "prepared", "small"]

    # The next run removes it.
    prepare(config(small, out, seed=5), use_ray=False, report=False)
    assert leftovers(out) == []
    assert json.loads((out / "stats.json").read_text())["config"]["seed"] == 5
