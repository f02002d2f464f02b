"""`fizzbot prepare` and the chat contract's data side, over real prepared folders: conversation
openers as targets, people who opt out, and a speaker map that stays stable as a corpus grows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fizzbot.chat.render import ANONYMOUS
from fizzbot.chat.speakers import SpeakerMap
from fizzbot.cli import main
from fizzbot.config import DataConfig
from fizzbot.data.pipeline import prepare

T0 = 1_700_000_000
PEOPLE = ("alice", "bob", "carol", "dave", "erin")


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def chat(n: int, start: float, rename: dict[str, str] | None = None) -> list[dict]:
    """n messages cycling through PEOPLE (author ids `id-<name>`), each text naming its author's id."""
    rename = rename or {}
    out = []
    for i in range(n):
        who = PEOPLE[(i * 3) % len(PEOPLE)]
        out.append({"username": rename.get(who, who), "author_id": f"id-{who}", "content": f"from id-{who} number {i}",
                    "timestamp": start + i * 30})
    return out


def corpus(folder: Path) -> Path:
    """general: two conversations a day apart; random: carol writes as "Caroline" there (same id)."""
    write_jsonl(folder / "general.jsonl", chat(40, T0) + chat(20, T0 + 86400))
    write_jsonl(folder / "random.jsonl", chat(30, T0 + 7, rename={"carol": "Caroline"}))
    return folder


def config(inputs: Path, output: Path, **fields) -> DataConfig:
    return DataConfig(inputs=[str(inputs)], output=str(output), val_split=0, **fields)


# --- openers ----------------------------------------------------------------------------------------


def test_openers_are_targets_with_an_empty_context_unless_turned_off(tmp_path):
    inputs = corpus(tmp_path / "in")
    on = prepare(config(inputs, tmp_path / "on"), use_ray=False, report=False)
    off = prepare(config(inputs, tmp_path / "off", openers=False), use_ray=False, report=False)
    assert on.train_examples == 90 and off.train_examples == 90 - 3  # 3 conversations
    with_openers = rows(tmp_path / "on" / "train.jsonl")
    openers = [r for r in with_openers if r["context"] == ""]
    assert sorted((r["channel"], r["ts"], r["target"]) for r in openers) == [
        ("general", T0, "<S0> from id-alice number 0 <EOT>"),
        ("general", T0 + 86400, "<S0> from id-alice number 0 <EOT>"),
        ("random", T0 + 7, "<S0> from id-alice number 0 <EOT>"),
    ]
    # Every other row is the same with or without openers (the window draws did not move).
    assert [r for r in with_openers if r["context"]] == rows(tmp_path / "off" / "train.jsonl")


# --- people who opt out ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["anonymize", "drop"])
def test_people_who_opt_out_are_never_targets_nor_speakers(tmp_path, mode):
    # carol by username (any case; she is "Caroline" in random, found by her id), dave by id.
    exclude = ["CAROL", "id-dave", "nobody-here"]
    out = tmp_path / "prepared"
    summary = prepare(config(corpus(tmp_path / "in"), out, exclude_speakers=exclude, exclude_mode=mode), use_ray=False, report=False)
    examples = rows(out / "train.jsonl")
    smap = SpeakerMap.load(out / "speaker_map.json")
    map_text = (out / "speaker_map.json").read_text(encoding="utf-8").lower()
    assert "carol" not in map_text and "dave" not in map_text
    assert {s.author_id for s in smap.speakers} == {"id-alice", "id-bob", "id-erin"}
    assert not any("id-carol" in r["target"] or "id-dave" in r["target"] for r in examples)
    assert summary.train_examples == 90 - 36 == len(examples)  # 16 + 8 + 12 of their messages
    opted_out_lines = [line for r in examples for line in r["context"].splitlines() if "id-carol" in line or "id-dave" in line]
    if mode == "anonymize":  # kept as context, under the shared others token
        # nameless (data.name_others names the rest of the long tail)
        assert opted_out_lines and all(line.startswith(f"{smap.other_token} {ANONYMOUS}: from") for line in opted_out_lines)
    else:
        assert opted_out_lines == []
    stats = json.loads((out / "stats.json").read_text())
    assert stats["excluded"] == {"mode": mode, "authors": 2, "messages": 36, "unmatched": ["nobody-here"]}
    assert (stats["channels"]["general"]["excluded"], stats["channels"]["random"]["excluded"]) == (24, 12)
    assert stats["totals"]["excluded"] == 36
    assert stats["totals"]["kept"] == (90 if mode == "anonymize" else 54)


def test_the_long_tail_speaks_under_its_own_names_with_name_others(tmp_path):
    """data.name_others: every message under the others token starts with its author's name as it
    was written there; an opted-out author stays nameless; the map records the convention."""
    out = tmp_path / "prepared"
    prepare(config(corpus(tmp_path / "in"), out, max_speakers=3, name_others=True, exclude_speakers=["dave"]),
            use_ray=False, report=False)
    smap = SpeakerMap.load(out / "speaker_map.json")
    assert smap.other_named and smap.other_token == "<S2>"
    lines = {line for r in rows(out / "train.jsonl") for line in [r["target"], *r["context"].splitlines()]}
    others = {line for line in lines if line.startswith("<S2> ")}
    own = {line.split(" ", 1)[1].split(": ", 1)[0]: line for line in others}
    assert set(own) == {"carol", "Caroline", "erin", "(anonymous)"}  # the long tail by name, dave anonymous
    assert all(line.startswith("<S2> (anonymous): from id-dave") for line in others if "id-dave" in line)
    assert all(": " not in line for line in lines - others)  # named speakers carry no name in the text
    # Without it, the long tail is one faceless token, as the original tool had it.
    plain = tmp_path / "plain"
    prepare(config(corpus(tmp_path / "in"), plain, max_speakers=3, name_others=False), use_ray=False, report=False)
    assert not SpeakerMap.load(plain / "speaker_map.json").other_named
    assert not any(": " in r["target"] for r in rows(plain / "train.jsonl"))
    # A stable map keeps its convention unless told otherwise (a checkpoint trained faceless refuses named data).
    grown = tmp_path / "grown"
    prepare(config(corpus(tmp_path / "in"), grown, max_speakers=3, speaker_map=str(plain)), use_ray=False, report=False)
    assert not SpeakerMap.load(grown / "speaker_map.json").other_named
    assert rows(grown / "train.jsonl") == rows(plain / "train.jsonl")
    told = tmp_path / "told"
    prepare(config(corpus(tmp_path / "in"), told, max_speakers=3, speaker_map=str(plain), name_others=True), use_ray=False, report=False)
    assert SpeakerMap.load(told / "speaker_map.json").diff(SpeakerMap.load(plain / "speaker_map.json")) is not None


# --- a stable speaker map --------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fizzbot.cli", *args], capture_output=True, text=True, timeout=600)


def test_a_growing_corpus_keeps_every_speakers_token(tmp_path):
    """Two prepares through the real CLI: the second, on a corpus with more channels and a newcomer
    busier than anyone, keeps <S0>... for the same people and appends after them while the cap allows."""
    from fizzbot.data.demo import write_demo_corpus

    demo = tmp_path / "demo"
    write_demo_corpus(demo, seed=0, days=3)
    first_inputs = tmp_path / "first"
    first_inputs.mkdir()
    for name in ("dev.jsonl", "music.json"):
        shutil.copy(demo / name, first_inputs / name)
    newcomer = tmp_path / "newcomer"
    write_jsonl(newcomer / "lobby.jsonl", [
        {"username": "zz_newcomer", "content": f"hello number {i}, lots to say", "timestamp": 1736121600 + 60 * i}
        for i in range(3000)  # from the demo's first day on, a message a minute: busier than anyone
    ])
    common = ["--no-ray", "data.max_speakers=8", "data.val_split=0"]
    first = run_cli("prepare", "--input", str(first_inputs), "--output", str(tmp_path / "p1"), *common)
    assert first.returncode == 0, first.stderr
    second = run_cli("prepare", "--input", str(demo), "--input", str(newcomer), "--output", str(tmp_path / "p2"),
                     *common, f"data.speaker_map={tmp_path / 'p1'}")
    assert second.returncode == 0, second.stderr

    before = SpeakerMap.load(tmp_path / "p1" / "speaker_map.json")
    after = SpeakerMap.load(tmp_path / "p2" / "speaker_map.json")
    assert len(before.tokens) < 8 and before.other_authors == 0
    for speaker in before.speakers:  # the same token for the same person
        assert after.token_for_author(speaker.author_id) == speaker.token, speaker
    assert after.other_token == before.other_token
    appended = [s for s in after.speakers if s.token not in before.tokens]
    last = max(int(t[2:-1]) for t in before.tokens)
    assert [int(s.token[2:-1]) for s in appended] == list(range(last + 1, 8))
    assert appended[0].username == "zz_newcomer"  # the busiest newcomer first
    assert len(after.tokens) == 8 and after.other_authors > 0  # past the cap: the others token
    stats = json.loads((tmp_path / "p2" / "stats.json").read_text())["speakers"]
    assert stats["previous_map"] == str(tmp_path / "p1")
    assert (stats["kept"], stats["appended"], stats["retired"]) == (len(before.speakers), len(appended), 0)
    assert stats["sharing_other_token"] == after.other_authors
    lobby = {r["speaker"] for r in rows(tmp_path / "p2" / "train.jsonl") if r["channel"] == "lobby"}
    assert lobby == {appended[0].token}

    # Without the earlier map the same corpus is ranked afresh, and <S0> is someone else.
    fresh = prepare(DataConfig(inputs=[str(demo), str(newcomer)], output=str(tmp_path / "p3"), max_speakers=8, val_split=0),
                    use_ray=False, report=False)
    fresh_map = SpeakerMap.load(fresh.output / "speaker_map.json")
    assert fresh_map.token_for_author("zz_newcomer") == "<S0>" and fresh_map.diff(after) is not None


def test_a_missing_earlier_map_is_named(tmp_path, capsys):
    inputs = corpus(tmp_path / "in")
    code = main(["prepare", "--no-ray", "--input", str(inputs), "--output", str(tmp_path / "out"), f"data.speaker_map={tmp_path / 'nowhere'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "data.speaker_map" in err and not (tmp_path / "out").exists()
