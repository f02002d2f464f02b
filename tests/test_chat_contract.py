"""The chat contract shared by training and serving: one trimming rule over both paths, the rules a
served context is read by (the checkpoint's budget, newcomers, people who opted out), and the
`fizzbot generate` CLI with names the model has never seen."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from fizzbot.artifacts.loading import chat_rules
from fizzbot.artifacts.prepared import context_settings
from fizzbot.chat.conversation import ChatRules, Prompt, decode, encode_conversation, speaker_to_force, tokens_to_forbid
from fizzbot.chat.speakers import OTHERS_NAME, SpeakerMap, build_speaker_map
from fizzbot.data.messages import Message, clean_content
from fizzbot.data.stages import named_others
from fizzbot.data.windows import WindowSettings, window_segment
from fizzbot.infer.engine import engine_from_checkpoint
from fizzbot.train.data import RowTokenizer

# --- one trimming rule: the training row path and the served prompt path give the same ids ---------


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return engine_from_checkpoint(tiny_checkpoint, device="cpu", max_batch_size=2)


@pytest.mark.parametrize(
    "max_messages, max_chars, max_message_chars, token_budget",
    [
        (8, 10_000, 2000, 4000),  # nothing trimmed
        (4, 10_000, 2000, 4000),  # the message budget
        (8, 300, 2000, 4000),  # the character budget drops old messages
        (8, 120, 2000, 4000),  # the newest message alone is over it: its end is kept
        (8, 10_000, 2000, 60),  # the token budget drops old messages
        (8, 10_000, 2000, 12),  # the newest message alone is over the token budget
        (8, 10_000, 40, 4000),  # over-long messages are cut
    ],
)
@pytest.mark.parametrize("named", [False, True], ids=["others", "named-others"])
def test_training_rows_and_served_prompts_are_trimmed_identically(engine, max_messages, max_chars, max_message_chars, token_budget, named):
    smap = dataclasses.replace(engine.speaker_map, other_named=named)
    names = [s.username for s in smap.speakers]
    said = [
        (names[4], "morning"),
        (names[5], "morning! coffee first"),
        (names[0], "same"),
        (names[0], "hey, is the build green again?"),
        (names[1], "I typed <S1> and <EOT> by accident " + "and then kept talking about it " * 6),
        ("a_newcomer", "first time here, hello!"),  # in training: the long tail's token; served: the guest's
        (names[2], "  welcome!  "),
        (names[1], "long one: " + "word " * 150),
        (names[0], "ok."),
    ]
    target = (names[3], "anyone up for a game later?")
    # Training: what a reader yields, windowed by `fizzbot prepare`'s function, tokenised by RowTokenizer.
    segment = [
        Message("#c", who, who, clean_content(text, max_message_chars), float(i), i)
        for i, (who, text) in enumerate(said + [target])
    ]
    tokens = [smap.token_for_author(m.author_id) for m in segment]
    if named:  # data.name_others, as `fizzbot prepare` renders it
        segment = named_others(segment, tokens, smap.other_token, frozenset())
    settings = WindowSettings(max_messages, max_messages, max_chars, seed=0, openers=False)
    *_, (_, row) = window_segment(segment, tokens, settings, val_from=len(segment))  # the target's row
    assert row["target"].endswith(target[1] + " <EOT>")
    speaker_ids = engine.tokenizer.convert_tokens_to_ids(smap.tokens)
    target_ids = engine.tokenizer(row["target"], add_special_tokens=False)["input_ids"]
    rows = RowTokenizer(engine.tokenizer, token_budget + len(target_ids), speaker_ids)([row["context"]], [row["target"]])
    trained = rows.row(0)[: rows.n_context[0]].tolist()

    # Serving: the same messages from a client, by the same rules, through the engine's prompt path.
    rules = ChatRules(max_context_messages=max_messages, max_context_chars=max_chars, max_message_chars=max_message_chars)
    prompt = encode_conversation([{"username": who, "content": text} for who, text in said], smap, rules)
    assert prompt.text == row["context"]
    engine.chat.max_prompt_tokens = token_budget  # the served prompt budget (serve.max_prompt_tokens)
    served, _ = engine.encode(prompt.text)
    assert served == trained
    assert len(served) <= token_budget


def test_the_checkpoint_records_how_its_data_was_windowed(tiny_checkpoint, demo_prepared):
    """The fixture prepared with 6 messages / 600 characters while its training config kept the
    defaults (12 / 2000): the checkpoint records the prepared ones, and serving reads those."""
    recorded = context_settings(demo_prepared)
    assert (recorded["max_context_messages"], recorded["max_context_chars"]) == (6, 600)
    config = yaml.safe_load((tiny_checkpoint / "fizzbot.yaml").read_text())
    assert (config["data"]["max_context_messages"], config["data"]["max_context_chars"]) == (6, 600)
    rules = chat_rules(tiny_checkpoint, "reject")
    assert (rules.max_context_messages, rules.max_context_chars, rules.unknown_speakers) == (6, 600, "reject")


# --- how a served context is read ---------------------------------------------------------------------


@pytest.fixture
def smap() -> SpeakerMap:
    return build_speaker_map(Counter(alice=9, bob=5), {}, max_speakers=8)  # <S0> alice, <S1> bob, <S2> others


def test_newcomers_take_the_guest_token_and_decode_back_where_unambiguous(smap):
    prompt = encode_conversation([{"username": "nat", "content": "hi"}, {"username": "bob", "content": "welcome"}], smap)
    assert prompt.text == "<S2> hi <EOT>\n<S1> welcome <EOT>\n" and prompt.guests == ["nat"]
    answer = "<S2> thanks! <EOT>\n<S0> hey nat <EOT>"
    assert [m.username for m in decode(answer, smap, prompt.speaker_names(smap))] == ["nat", "alice"]
    # Same name in another case: still one newcomer.
    again = encode_conversation([{"username": "nat", "content": "hi"}, {"username": "NAT", "content": "me again"}], smap)
    assert again.speaker_names(smap)["<S2>"] == "nat"
    # Two newcomers, or an unnamed one: the guest token is nobody in particular.
    two = encode_conversation([{"username": "nat", "content": "hi"}, {"username": "kim", "content": "yo"}], smap)
    assert two.speaker_names(smap)["<S2>"] == OTHERS_NAME
    unnamed = encode_conversation([{"username": "nat", "content": "hi"}, {"username": None, "content": "yo", "anonymous": True}], smap)
    assert unnamed.text.count("<S2>") == 2 and unnamed.speaker_names(smap)["<S2>"] == OTHERS_NAME
    # A forced newcomer counts as one, and names the first message even among several.
    assert Prompt("").speaker_names(smap, forced_guest="zed")["<S2>"] == "zed"
    assert [m.username for m in decode("<S2> me <EOT>\n<S2> who", smap, two.speaker_names(smap), "zed")] == ["zed", OTHERS_NAME]


def test_a_named_others_token_carries_each_newcomers_name_in_and_out(smap):
    """data.name_others: the guest token's messages carry their author's name in the prompt, as in
    training, and a guest message the model writes reads as the name it wrote."""
    named = dataclasses.replace(smap, other_named=True)
    said = [{"username": "nat", "content": "hi"}, {"username": "kim", "content": "nat: yo"},
            {"username": "bob", "content": "welcome"}, {"username": None, "content": "psst", "anonymous": True}]
    prompt = encode_conversation(said, named)
    assert prompt.text == "<S2> nat: hi <EOT>\n<S2> kim: nat: yo <EOT>\n<S1> welcome <EOT>\n<S2> (anonymous): psst <EOT>\n"
    answer = "<S2> kim: thanks bob <EOT>\n<S0> nat: hey <EOT>\n<S2> someone_new: hello <EOT>\n<S2> no name"
    assert [(m.username, m.content) for m in decode(answer, named, prompt.speaker_names(named))] == [
        ("kim", "thanks bob"), ("alice", "nat: hey"), ("someone_new", "hello"), (OTHERS_NAME, "no name")]
    # A forced newcomer answers under the name asked for, whatever name the model wrote.
    forced = decode("<S2> kim: me <EOT>", named, Prompt("").speaker_names(named, "zed"), "zed")
    assert [(m.username, m.content) for m in forced] == [("zed", "me")]
    # Someone who opted out stays anonymous, and a name cannot smuggle in a separator or a newline.
    out = encode_conversation([{"username": "carol", "content": "x"}, {"username": "a: b\nc", "content": "y"}], named,
                              ChatRules(exclude_speakers=frozenset({"carol"})))
    assert out.text == "<S2> (anonymous): x <EOT>\n<S2> a:b c: y <EOT>\n"
    # The map records the convention, and a checkpoint trained one way refuses data rendered the other.
    assert SpeakerMap.from_json(json.loads(json.dumps(named.to_json()))).other_named
    assert "named" in named.diff(smap)


def test_reject_refuses_newcomers_and_unnamed_messages(smap):
    reject = ChatRules(unknown_speakers="reject")
    with pytest.raises(KeyError, match="message 1: unknown speaker 'nat'; known speakers: alice, bob"):
        encode_conversation([{"username": "bob", "content": "hi"}, {"username": "nat", "content": "hi"}], smap, reject)
    with pytest.raises(KeyError, match="message 0 has no name.*unknown_speakers: reject"):
        encode_conversation([{"username": None, "content": "hi", "anonymous": True}], smap, reject)
    with pytest.raises(KeyError, match="unknown speaker 'nat'"):
        speaker_to_force("nat", smap, reject)
    assert speaker_to_force("nat", smap) == ("<S2>", "nat") and speaker_to_force("Bob", smap) == ("<S1>", None)
    assert tokens_to_forbid(["nat", "alice", "kim"], smap) == ("<S2>", "<S0>")


def test_people_who_opted_out_are_anonymous_or_left_out_and_never_spoken_as(smap):
    said = [{"username": "alice", "content": "hi"}, {"username": "Carol", "content": "secret"}, {"username": "bob", "content": "yo"}]
    anonymize = ChatRules(exclude_speakers=frozenset({"carol"}))
    prompt = encode_conversation(said, smap, anonymize)
    assert prompt.text == "<S0> hi <EOT>\n<S2> secret <EOT>\n<S1> yo <EOT>\n"
    # Anonymous: the guest token never decodes to their name.
    assert prompt.guests == [None] and prompt.speaker_names(smap)["<S2>"] == OTHERS_NAME
    dropped = encode_conversation(said, smap, ChatRules(exclude_speakers=frozenset({"carol"}), exclude_mode="drop"))
    assert dropped.text == "<S0> hi <EOT>\n<S1> yo <EOT>\n"
    with pytest.raises(KeyError, match="opted out"):
        speaker_to_force("CAROL", smap, anonymize)
    assert tokens_to_forbid(["carol"], smap, anonymize) == ()
    # A token retired by a grown map reads as its person did: anonymous.
    grown = build_speaker_map(Counter(alice=9, bob=5), {}, 8, previous=smap, excluded={"bob"})
    assert encode_conversation([{"speaker": "<S1>", "content": "old"}], grown).text == "<S2> old <EOT>\n"
    with pytest.raises(KeyError, match="retired"):
        speaker_to_force("<S1>", grown)


def test_the_context_budget_counts_what_it_drops(smap):
    said = [{"username": "alice", "content": f"message {i}"} for i in range(10)]
    prompt = encode_conversation(said, smap, ChatRules(max_context_messages=3))
    assert prompt.dropped == 7 and prompt.text.count("<EOT>") == 3 and "message 9" in prompt.text
    assert encode_conversation(said, smap).dropped == 0  # a checkpoint without recorded settings: no budget


# --- the CLI, in a subprocess -----------------------------------------------------------------------------


def generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fizzbot.cli", "generate", *args, "generate.device=cpu"],
                          capture_output=True, text=True, timeout=300)


def test_cli_generate_with_a_newcomer(tiny_checkpoint, tmp_path):
    context = tmp_path / "context.json"
    context.write_text(json.dumps([{"username": "newbie_nat", "content": "hi all, first time here"}]))
    guest = SpeakerMap.load(tiny_checkpoint / "speaker_map.json").guest_token
    args = ["--model-dir", str(tiny_checkpoint), "--context-file", str(context), "--speaker", "newbie_nat",
            "--content", "anyone around?", "--next-speaker", "newbie_nat", "--turns", "2", "--seed", "4"]
    shown = generate(*args)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("newbie_nat: ")
    raw = generate(*args, "--raw")
    assert raw.returncode == 0 and raw.stdout.startswith(guest), raw.stdout[:300]  # the raw text keeps the token
    refused = generate(*args, "generate.unknown_speakers=reject")
    assert refused.returncode == 2 and "unknown speaker 'newbie_nat'" in refused.stderr


def test_cli_generate_with_the_original_tools_flat_map_or_opted_out_people(tiny_checkpoint, tmp_path):
    smap = SpeakerMap.load(tiny_checkpoint / "speaker_map.json")
    flat = tmp_path / "flat"
    shutil.copytree(tiny_checkpoint, flat)
    (flat / "speaker_map.json").write_text(json.dumps({s.token: s.username for s in smap.speakers}))
    # A flat map has no others token: a newcomer cannot take it, and the error says so.
    result = generate("--model-dir", str(flat), "--speaker", "newbie_nat", "--content", "hi")
    assert result.returncode == 2 and "no shared others token" in result.stderr
    # Known names still work.
    assert generate("--model-dir", str(flat), "--speaker", smap.speakers[0].username, "--content", "hi", "--seed", "1").returncode == 0

    opted = tmp_path / "opted"
    shutil.copytree(tiny_checkpoint, opted)
    config = yaml.safe_load((opted / "fizzbot.yaml").read_text())
    config["data"]["exclude_speakers"] = [smap.speakers[1].username.upper()]
    (opted / "fizzbot.yaml").write_text(yaml.safe_dump(config))
    result = generate("--model-dir", str(opted), "--next-speaker", smap.speakers[1].username, "--content", "hi", "--speaker", "x")
    assert result.returncode == 2 and "opted out" in result.stderr
