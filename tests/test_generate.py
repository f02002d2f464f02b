"""The generation engine, decoding, and the generate/decode CLI, on a real (tiny) trained checkpoint."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading

import pytest
import torch

from fizzbot.cli import main as cli
from fizzbot.chat.speakers import OTHERS_NAME, SpeakerMap
from fizzbot.chat.conversation import ChatRules, decode, encode_conversation, format_lines
from fizzbot.chat.render import split_messages
from fizzbot.infer.engine import Request, SamplingParams, engine_from_checkpoint

MESSAGE_RE = re.compile(r"^<S\d+>.*<EOT>$", re.S)


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return engine_from_checkpoint(tiny_checkpoint, device="cpu", max_prompt_tokens=200, max_batch_size=8)


def prompt_for(engine, *pairs):
    names = [s.username for s in engine.speaker_map.speakers]
    messages = [{"username": names[i % len(names)], "content": text} for i, text in pairs]
    return encode_conversation(messages, engine.speaker_map).text


def run(engine, prompt, **params):
    (result,) = engine.generate([Request(prompt, SamplingParams(**params))])
    return result


# --- decoding ------------------------------------------------------------------------------------


def test_decode_splits_on_speaker_tokens_without_needing_eot():
    smap = SpeakerMap.from_json({"<S0>": "alice", "<S1>": "bob"})
    text = "<S0> hi there <EOT>\n<S1> no eot here\n<S0> again"
    assert split_messages(text) == [("<S0>", "hi there"), ("<S1>", "no eot here"), ("<S0>", "again")]
    assert format_lines(decode(text, smap)) == "alice: hi there\nbob: no eot here\nalice: again"


def test_encode_defuses_typed_special_tokens_and_checks_names():
    smap = SpeakerMap.from_json({"<S0>": "alice", "<S1>": "bob"})
    text = encode_conversation([{"username": "bob", "content": "I typed <S0> and <EOT>"}], smap).text
    assert text == "<S1> I typed < S0> and < EOT> <EOT>\n"
    with pytest.raises(KeyError, match="message 0: unknown speaker 'carol'; known speakers: alice, bob"):
        encode_conversation([{"username": "carol", "content": "x"}], smap, ChatRules(unknown_speakers="reject"))
    # The original tool's flat map has no others token for a guest to take.
    with pytest.raises(KeyError, match="message 0: speaker 'carol' is not in this speaker map.*no shared others token"):
        encode_conversation([{"username": "carol", "content": "x"}], smap, ChatRules(unknown_speakers="guest"))


# --- the engine ------------------------------------------------------------------------------------


def test_turns_produce_well_formed_messages(engine):
    result = run(engine, prompt_for(engine, (0, "hey everyone")), turns=3, seed=1, max_new_tokens=30, eos_stop=False)
    # Turns are joined by the newline the engine adds after each <EOT>.
    messages = result.text.split("<EOT>\n")
    assert len(messages) == 3
    for message in messages[:-1]:
        assert MESSAGE_RE.match(message + "<EOT>"), message
    assert MESSAGE_RE.match(messages[-1]), messages[-1]
    assert len(re.findall(r"<S\d+>", result.text)) == 3  # one speaker token per message, none inside one
    # Each message is at least its speaker token and <EOT>; the newlines between turns count too.
    assert result.completion_tokens >= 3 * 2 + 2
    assert result.finish_reason in ("stop", "length")


def test_same_seed_same_text_and_different_seeds_differ(engine):
    prompt = prompt_for(engine, (0, "anyone around?"))
    first = run(engine, prompt, turns=2, seed=7, temperature=1.0)
    again = run(engine, prompt, turns=2, seed=7, temperature=1.0)
    assert first.text == again.text
    others = {run(engine, prompt, turns=2, seed=s, temperature=1.0).text for s in range(8, 14)}
    assert len(others | {first.text}) > 1


def test_batching_does_not_change_a_seeded_request(engine):
    prompt = prompt_for(engine, (1, "what are we playing tonight?"))
    alone = run(engine, prompt, turns=2, seed=3, temperature=0.0)
    crowd = [Request(prompt_for(engine, (i, f"message number {i} " * (i + 1))), SamplingParams(turns=2, seed=i, temperature=0.0)) for i in range(5)]
    mine = Request(prompt, SamplingParams(turns=2, seed=3, temperature=0.0))
    engine.generate(crowd[:2] + [mine] + crowd[2:])
    assert mine.result.text == alone.text


def test_forced_and_forbidden_speakers(engine):
    tokens = engine.speaker_map.tokens
    prompt = prompt_for(engine, (0, "hello"))
    forced = run(engine, prompt, force_speaker=tokens[2], turns=1, seed=0)
    assert forced.text.startswith(tokens[2])
    banned = tuple(tokens[:3])
    for seed in range(5):
        text = run(engine, prompt, forbid_speakers=banned, turns=3, seed=seed).text
        assert not any(t in text for t in banned), text


def test_max_new_tokens_closes_the_message_and_reports_length(engine):
    lengths = set()
    for seed in range(6):
        result = run(engine, prompt_for(engine, (0, "tell me everything")), max_new_tokens=3, turns=1, seed=seed, eos_stop=False)
        assert result.text.endswith("<EOT>") and len(split_messages(result.text)) == 1
        assert result.completion_tokens <= 1 + 3 + 1  # speaker, at most 3 tokens, <EOT>
        if result.finish_reason == "length":
            assert result.completion_tokens == 5
        lengths.add(result.finish_reason)
    assert "length" in lengths  # an untrained-enough model runs into the budget at least once


def test_min_new_tokens_keeps_every_message_from_ending_early(engine):
    """<EOT> (and EOS) are masked until a turn has its least number of tokens; the budget still wins."""
    prompt = prompt_for(engine, (0, "hello"))
    for seed in range(6):
        result = run(engine, prompt, turns=3, seed=seed, min_new_tokens=4, max_new_tokens=12)
        assert len(split_messages(result.text)) == 3, result.text
        assert result.completion_tokens >= 3 * (1 + 4 + 1), result.text  # speaker, at least 4 tokens, <EOT>
    # Where <EOT> is all the model wants, the sampler still writes min_new_tokens of text.
    from fizzbot.infer.sampling import MESSAGE

    logits = torch.zeros(1, engine.vocab)
    logits[0, engine.chat.eot_id] = 100.0
    index = torch.tensor([0])
    eager = one_row(engine, MESSAGE, temperature=0.0, min_new_tokens=2)
    first, second, third = (eager.sample(logits, index).item() for _ in range(3))
    assert first != engine.chat.eot_id and second != engine.chat.eot_id and third == engine.chat.eot_id
    assert one_row(engine, MESSAGE, temperature=0.0).sample(logits, index).item() == engine.chat.eot_id


def test_stop_strings_cut_the_text(engine):
    result = run(engine, prompt_for(engine, (0, "hi")), turns=4, seed=2, stop=("\n",))
    assert "\n" not in result.text
    assert result.finish_reason == "stop"


def test_long_context_is_trimmed_by_whole_messages(engine):
    prompt = prompt_for(engine, *[(i, f"this is message {i} with some words in it") for i in range(40)])
    ids, dropped = engine.encode(prompt)
    assert dropped > 0
    assert len(ids) <= engine.max_prompt_tokens
    assert ids[len(engine.chat.bos)] in engine.chat.speaker_ids.tolist()  # it starts at a message boundary
    result = run(engine, prompt, turns=1, seed=0)
    assert result.dropped_messages == dropped and result.prompt_tokens == len(ids)


def one_row(engine, phase, **params):
    """Device state for one row of the engine's vocabulary in `phase`, to sample from by hand."""
    from fizzbot.infer.sampling import PHASE, SlotState

    state = SlotState(1, engine.vocab, torch.device("cpu"), [engine.chat])
    p = SamplingParams(**params)
    state.write_rows([0], state.rows_for([(0, engine.chat.bos, p, None, [], True, 512)]))
    state.ints[0, PHASE] = phase
    return state


def test_eos_is_never_sampled_without_eos_stop(engine):
    from fizzbot.infer.sampling import MESSAGE

    logits = torch.zeros(1, engine.vocab)
    logits[0, engine.chat.eos_id] = 100.0
    index = torch.tensor([0])
    assert one_row(engine, MESSAGE, eos_stop=False, temperature=0.0).sample(logits, index).tolist() != [engine.chat.eos_id]
    assert one_row(engine, MESSAGE, eos_stop=True, temperature=0.0).sample(logits, index).tolist() == [engine.chat.eos_id]


def test_sampling_honours_top_k_and_the_grammar(engine):
    from fizzbot.infer.sampling import MESSAGE, SPEAKER

    logits = torch.randn(1, engine.vocab)
    index = torch.tensor([0])
    allowed = logits[0].masked_fill(~engine.chat.message_allowed(), float("-inf"))
    for seed in range(20):
        params = dict(top_k=3, top_p=1.0, temperature=1.0, seed=seed, repetition_penalty=1.0)
        assert one_row(engine, MESSAGE, **params).sample(logits, index).item() in allowed.topk(3).indices.tolist()
        assert one_row(engine, SPEAKER, **params).sample(logits, index).item() in engine.chat.speaker_ids.tolist()


def test_paged_cache_matches_the_dynamic_one(tiny_checkpoint):
    """The paged KV cache (chunked prefill, blocks reused as rows come and go) decodes what transformers'
    own DynamicCache does, for every request whatever it is batched with."""
    paged = engine_from_checkpoint(tiny_checkpoint, device="cpu", max_prompt_tokens=64, max_batch_size=4, max_cache_len=128)
    paged.prefill_chunk = 24  # long prompts take several steps, interleaved with decoding
    dynamic = engine_from_checkpoint(tiny_checkpoint, device="cpu", max_prompt_tokens=64, max_batch_size=4, backend="dynamic")
    requests = lambda: [Request(prompt_for(dynamic, (i, f"hello number {i} " * (1 + i % 3))), SamplingParams(turns=3, seed=i, max_new_tokens=12, eos_stop=False)) for i in range(7)]
    a = [r.text for r in dynamic.generate(requests())]
    b = [r.text for r in paged.generate(requests())]
    assert a == b
    alone = [paged.generate([r])[0].text for r in requests()[:3]]
    assert alone == b[:3]


def test_requests_join_a_running_batch(engine):
    """Continuous batching: requests submitted while others decode share their forward passes."""
    engine.start()
    try:
        prompt = prompt_for(engine, (0, "hey"))
        steps_before = engine.steps
        first = [engine.submit(Request(prompt, SamplingParams(turns=2, seed=i, max_new_tokens=20, eos_stop=False))) for i in range(3)]
        threading.Event().wait(0.02)
        later = [engine.submit(Request(prompt, SamplingParams(turns=2, seed=10 + i, max_new_tokens=20, eos_stop=False))) for i in range(3)]
        for r in first + later:
            assert r.done.wait(60)
            assert r.error is None
        steps = engine.steps - steps_before
        longest = max(r.result.completion_tokens for r in first + later)
        total = sum(r.result.completion_tokens for r in first + later)
        assert steps < total  # shared forward passes
        assert steps >= longest - 1
    finally:
        engine.stop()
        engine._thread = None


def test_unknown_forced_speaker_is_refused(engine):
    from fizzbot.infer.engine import EngineError

    with pytest.raises(EngineError):
        engine.submit(Request("", SamplingParams(force_speaker="<S999>")))


# --- the CLI ---------------------------------------------------------------------------------------


def names_of(checkpoint):
    return [s.username for s in SpeakerMap.load(checkpoint / "speaker_map.json").speakers]


def test_cli_generate_prints_usernames_and_raw_pipes_into_decode(tiny_checkpoint, capsys):
    who = names_of(tiny_checkpoint)[0]
    args = ["generate", "--model-dir", str(tiny_checkpoint), "--speaker", who, "--content", "hi all", "--turns", "3", "--seed", "5"]
    assert cli(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    known = set(names_of(tiny_checkpoint)) | {OTHERS_NAME}
    assert all(line.split(":", 1)[0] in known for line in lines)  # "name: text" (an empty message ends in ":")
    assert cli(args + ["--raw"]) == 0
    raw = capsys.readouterr().out
    assert raw.startswith("<S")
    decoded = subprocess.run(
        [sys.executable, "-m", "fizzbot.cli", "decode", "--model-dir", str(tiny_checkpoint)],
        input=raw, capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()
    assert decoded == lines


def test_cli_context_file_and_unknown_speaker(tiny_checkpoint, tmp_path, capsys):
    names = names_of(tiny_checkpoint)
    context = tmp_path / "context.json"
    context.write_text(json.dumps([{"username": names[1], "content": "morning"}, {"username": names[2], "content": "hi!"}]))
    assert cli(["generate", "--model-dir", str(tiny_checkpoint), "--context-file", str(context), "--seed", "1", "--turns", "1"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    refused = ["generate", "--model-dir", str(tiny_checkpoint), "--speaker", "nobody-at-all", "--content", "x", "generate.unknown_speakers=reject"]
    assert cli(refused) == 2
    err = capsys.readouterr().err
    assert "unknown speaker 'nobody-at-all'" in err and names[0] in err


def test_cli_interactive_chat(tiny_checkpoint):
    who = names_of(tiny_checkpoint)[0]
    proc = subprocess.run(
        [sys.executable, "-m", "fizzbot.cli", "generate", "--model-dir", str(tiny_checkpoint), "--speaker", who,
         "--interactive", "--turns", "2", "--seed", "3"],
        input="hello channel\n\n/quit\n", capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    replies = [line for line in proc.stdout.splitlines() if ": " in line]
    assert len(replies) == 4  # two turns after each of the two inputs
