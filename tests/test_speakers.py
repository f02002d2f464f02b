"""The speaker map: ranking, the cap, the JSON file (ours and the original tool's), and `resolve`."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from fizzbot.chat.speakers import OPTED_OUT_NAME, OTHERS_NAME, SpeakerMap, build_speaker_map, growth


def names(**counts: int) -> tuple[Counter, dict[str, str]]:
    """author id -> count, and author id -> username (`user_<id>`)."""
    return Counter(counts), {a: f"user_{a}" for a in counts}


def test_most_active_first_ties_by_id():
    counts, usernames = names(carol=5, alice=9, bob=5, dave=1, aaron=5)
    smap = build_speaker_map(counts, usernames, max_speakers=10)
    assert [(s.token, s.author_id, s.messages) for s in smap.speakers] == [
        ("<S0>", "alice", 9), ("<S1>", "aaron", 5), ("<S2>", "bob", 5), ("<S3>", "carol", 5), ("<S4>", "dave", 1),
    ]
    assert [s.username for s in smap.speakers][:2] == ["user_alice", "user_aaron"]
    assert smap.token_for_author("bob") == "<S2>"
    # Everyone fits, and still the others token follows them: it is where newcomers go.
    assert smap.other_token == smap.guest_token == "<S5>" and smap.tokens == [f"<S{i}>" for i in range(6)]
    assert (smap.other_authors, smap.other_messages) == (0, 0)
    assert smap.token_for_author("nobody") == "<S5>"


def test_ranking_does_not_depend_on_counter_order():
    forward = Counter({f"a{i:02d}": i % 4 + 1 for i in range(30)})
    backward = Counter(dict(reversed(list(forward.items()))))
    usernames = {a: a for a in forward}
    assert build_speaker_map(forward, usernames, 8).to_json() == build_speaker_map(backward, usernames, 8).to_json()


def test_the_cap_counts_the_others_token():
    counts, usernames = names(a=3, b=2, c=1)
    assert build_speaker_map(counts, usernames, max_speakers=4).tokens == ["<S0>", "<S1>", "<S2>", "<S3>"]
    capped = build_speaker_map(counts, usernames, max_speakers=3)
    assert capped.tokens == ["<S0>", "<S1>", "<S2>"] and capped.other_token == "<S2>"
    assert [s.author_id for s in capped.speakers] == ["a", "b"] and capped.token_for_author("c") == "<S2>"


def test_cap_rest_share_the_last_token():
    counts = Counter({f"u{i}": 100 - i for i in range(10)})  # u0 most active
    smap = build_speaker_map(counts, {a: a.upper() for a in counts}, max_speakers=4)
    assert len(smap.tokens) == 4
    assert [s.author_id for s in smap.speakers] == ["u0", "u1", "u2"]
    assert smap.other_token == "<S3>"
    # The map says who shares it: seven authors and their messages.
    assert smap.other_authors == 7
    assert smap.other_messages == sum(100 - i for i in range(3, 10))
    assert smap.token_for_author("u9") == smap.token_for_author("u3") == "<S3>"
    assert smap.token_for_author("never-seen") == "<S3>"
    assert smap.token_to_username() == {"<S0>": "U0", "<S1>": "U1", "<S2>": "U2", "<S3>": OTHERS_NAME}
    doc = smap.to_json()
    assert doc["other"] == {"token": "<S3>", "authors": 7, "messages": smap.other_messages, "named": False}
    assert doc["token_to_username"]["<S3>"] == OTHERS_NAME


def test_json_round_trip(tmp_path):
    counts = Counter({f"id{i}": 50 - i for i in range(6)})
    usernames = {a: f"Nick {a} ✓" for a in counts}  # spaces and non-ASCII survive
    smap = build_speaker_map(counts, usernames, max_speakers=4)
    path = tmp_path / "speaker_map.json"
    smap.save(path)
    loaded = SpeakerMap.load(path)
    assert loaded == smap
    assert loaded.to_json() == smap.to_json()
    assert loaded.token_for_author("id5") == "<S3>" and loaded.token_for_author("id1") == "<S1>"
    assert "✓" in path.read_text(encoding="utf-8")  # written as UTF-8, not \u escapes
    # No temporary file is left beside it.
    assert [p.name for p in tmp_path.iterdir()] == ["speaker_map.json"]


@pytest.mark.parametrize("flat", [
    {"<S0>": "alice", "<S2>": "carol", "<S1>": "bob"},
    {"alice": "<S0>", "carol": "<S2>", "bob": "<S1>"},
])
def test_original_tools_flat_maps_in_both_directions(tmp_path, flat):
    path = tmp_path / "speaker_map.json"
    path.write_text(json.dumps(flat), encoding="utf-8")
    smap = SpeakerMap.load(path)
    assert [(s.token, s.username) for s in smap.speakers] == [("<S0>", "alice"), ("<S1>", "bob"), ("<S2>", "carol")]
    assert smap.tokens == ["<S0>", "<S1>", "<S2>"] and smap.other_token is None
    assert smap.token_for_author("bob") == "<S1>"  # the username stands in for the id
    assert smap.resolve("carol") == "<S2>"


def test_flat_map_orders_tokens_numerically():
    smap = SpeakerMap.from_json({f"<S{i}>": f"n{i}" for i in (10, 2, 1, 0)})
    assert smap.tokens == ["<S0>", "<S1>", "<S2>", "<S10>"]


@pytest.mark.parametrize("bad, message", [
    ({}, "expected a JSON object"),
    ([], "expected a JSON object"),
    ({"alice": "bob"}, "holds no speaker token"),
    ({"<S0>": 3}, "is not a string"),
])
def test_bad_maps_are_refused_with_the_reason(bad, message):
    with pytest.raises(ValueError, match=message):
        SpeakerMap.from_json(bad)


def test_load_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        SpeakerMap.load(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{\n"<S0>": "a",,\n}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json:2: malformed JSON"):
        SpeakerMap.load(broken)


def test_resolve():
    counts = Counter({"1": 9, "2": 8, "3": 7, "4": 1, "5": 1})
    usernames = {"1": "Alice", "2": "bob", "3": "Carol", "4": "dave", "5": "erin"}
    smap = build_speaker_map(counts, usernames, max_speakers=4)
    # By username: exact, then case-insensitive; surrounding spaces ignored.
    assert smap.resolve("Alice") == "<S0>"
    assert smap.resolve("alice") == "<S0>"
    assert smap.resolve("  BOB ") == "<S1>"
    # By token, the shared one included.
    assert smap.resolve("<S2>") == "<S2>"
    assert smap.resolve("<S3>") == "<S3>"
    with pytest.raises(KeyError, match=r"unknown speaker token <S4>; valid tokens are <S0>\.\.<S3>"):
        smap.resolve("<S4>")
    # An unknown name lists the known ones.
    with pytest.raises(KeyError) as unknown:
        smap.resolve("mallory")
    assert "unknown speaker 'mallory'" in str(unknown.value)
    assert "Alice, bob, Carol" in str(unknown.value)


def test_resolve_exact_case_wins_and_real_ambiguity_is_reported():
    smap = SpeakerMap.from_json({"<S0>": "Sam", "<S1>": "sam", "<S2>": "SAM"})
    assert smap.resolve("Sam") == "<S0>" and smap.resolve("sam") == "<S1>"
    with pytest.raises(KeyError, match=r"ambiguous \(<S0>, <S1>, <S2>\)"):
        smap.resolve("sAm")


def test_resolve_lists_at_most_twenty_names():
    smap = build_speaker_map(Counter({f"u{i:02d}": 100 - i for i in range(30)}), {}, max_speakers=64)
    with pytest.raises(KeyError) as unknown:
        smap.resolve("nobody")
    assert "u19" in str(unknown.value) and "u20" not in str(unknown.value)
    assert "(and 10 more)" in str(unknown.value)


# --- unknown speakers: the guest token ----------------------------------------------------------------


def test_unknown_names_take_the_guest_token_or_are_refused():
    counts, usernames = names(a=3, b=2)
    smap = build_speaker_map(counts, usernames, max_speakers=8)
    assert smap.lookup("user_a") == "<S0>" and smap.lookup("newcomer") is None
    assert smap.token_for_name("USER_B", "guest") == "<S1>"
    assert smap.token_for_name("newcomer", "guest") == smap.guest_token == "<S2>"
    with pytest.raises(KeyError, match="unknown speaker 'newcomer'; known speakers: user_a, user_b"):
        smap.token_for_name("newcomer", "reject")
    # A token is never a newcomer: an unknown one is an error under either policy.
    with pytest.raises(KeyError, match="unknown speaker token <S7>"):
        smap.token_for_name("<S7>", "guest")


def test_a_flat_map_has_no_guest_token_and_says_so():
    smap = SpeakerMap.from_json({"<S0>": "alice", "<S1>": "bob"})
    assert smap.guest_token is None
    with pytest.raises(KeyError, match="no shared others token.*use a known speaker: alice, bob"):
        smap.token_for_name("carol", "guest")


# --- a stable map: earlier assignments kept, new speakers appended ------------------------------------


def test_a_grown_map_keeps_every_token_and_appends_after_them():
    first = build_speaker_map(Counter(a=10, b=5, c=1), {"a": "ann", "b": "ben", "c": "cy"}, max_speakers=8)
    assert first.tokens == ["<S0>", "<S1>", "<S2>", "<S3>"] and first.other_token == "<S3>"
    # Later: c is now the most active, two newcomers (one busier than anyone), b renamed itself.
    counts = Counter(a=11, b=6, c=50, d=99, e=2)
    grown = build_speaker_map(counts, {"a": "ann", "b": "benji", "c": "cy", "d": "dee", "e": "eve"}, 8, previous=first)
    assert [(s.token, s.author_id, s.username) for s in grown.speakers] == [
        ("<S0>", "a", "ann"), ("<S1>", "b", "benji"), ("<S2>", "c", "cy"), ("<S4>", "d", "dee"), ("<S5>", "e", "eve"),
    ]
    assert grown.other_token == "<S3>" and grown.tokens == [f"<S{i}>" for i in range(6)]
    assert grown.diff(first) is not None  # two tokens more
    assert growth(first, grown) == {"kept": 3, "appended": 2, "retired": 0}
    # A fresh ranking of the same counts would move everyone: d would be <S0>.
    assert build_speaker_map(counts, {}, 8).token_for_author("d") == "<S0>"


def test_past_the_cap_newcomers_share_the_old_others_token():
    first = build_speaker_map(Counter(a=10, b=5), {}, max_speakers=4)  # <S0> a, <S1> b, <S2> others
    grown = build_speaker_map(Counter(a=1, b=1, x=50, y=40, z=30), {}, max_speakers=4, previous=first)
    assert [(s.token, s.author_id) for s in grown.speakers] == [("<S0>", "a"), ("<S1>", "b"), ("<S3>", "x")]
    assert grown.other_token == "<S2>" and (grown.other_authors, grown.other_messages) == (2, 70)
    assert grown.token_for_author("z") == "<S2>"
    # A previous map already at (or over) the cap keeps all it has and appends nothing.
    again = build_speaker_map(Counter(q=500), {}, max_speakers=2, previous=grown)
    assert again.tokens == grown.tokens and again.token_for_author("q") == "<S2>"


def test_a_flat_map_grows_an_others_token_first():
    flat = SpeakerMap.from_json({"<S0>": "alice", "<S1>": "bob"})
    grown = build_speaker_map(Counter(alice=3, bob=2, carol=9), {}, max_speakers=3, previous=flat)
    # The cap (3) is below what the map needs (2 kept + others): kept tokens are never taken away.
    assert grown.other_token == "<S2>" and [s.author_id for s in grown.speakers] == ["alice", "bob"]
    assert grown.token_for_author("carol") == "<S2>"
    roomy = build_speaker_map(Counter(alice=3, bob=2, carol=9), {}, max_speakers=8, previous=flat)
    assert roomy.other_token == "<S2>" and roomy.token_for_author("carol") == "<S3>"


def test_opting_out_retires_a_token_that_no_one_else_gets(tmp_path):
    first = build_speaker_map(Counter(a=10, b=5, c=3), {"a": "ann", "b": "ben", "c": "cy"}, max_speakers=8)
    grown = build_speaker_map(Counter(a=10, b=5, c=3, d=1), {"a": "ann", "b": "ben", "c": "cy", "d": "dee"}, 8, previous=first, excluded={"b"})
    retired = grown.speakers[1]
    assert (retired.token, retired.retired, retired.author_id, retired.username) == ("<S1>", True, None, OPTED_OUT_NAME)
    assert "ben" not in json.dumps(grown.to_json())
    assert grown.token_for_author("b") == grown.other_token == "<S3>"
    assert grown.token_for_author("d") == "<S4>"  # appended after every existing token, not into the retired slot
    assert "<S1>" not in grown.speakable_tokens and "<S1>" in grown.tokens
    assert grown.lookup(OPTED_OUT_NAME) is None
    assert growth(first, grown) == {"kept": 2, "appended": 1, "retired": 1}
    path = tmp_path / "speaker_map.json"
    grown.save(path)
    assert SpeakerMap.load(path) == grown
    # A fresh map never gives an excluded author a token.
    fresh = build_speaker_map(Counter(a=10, b=5), {}, max_speakers=8, excluded={"b"})
    assert [s.author_id for s in fresh.speakers] == ["a"] and fresh.token_for_author("b") == "<S1>"


def test_diff_names_what_two_maps_disagree_on():
    a = build_speaker_map(Counter(x=5, y=3), {"x": "ex", "y": "why"}, max_speakers=8)
    renamed = build_speaker_map(Counter(x=50, y=30), {"x": "EX", "y": "WHY"}, max_speakers=8)
    assert a.diff(renamed) is None and a.diff(a) is None  # usernames and counts are no disagreement
    swapped = build_speaker_map(Counter(x=3, y=5), {"x": "ex", "y": "why"}, max_speakers=8)
    message = a.diff(swapped)
    assert message.startswith("2 speaker token(s) differ") and "<S0> is author 'x' (ex) here but author 'y' (why) there" in message
    smaller = build_speaker_map(Counter(x=5), {}, max_speakers=8)
    assert "<S2> is the shared others token here but missing there" in a.diff(smaller)
