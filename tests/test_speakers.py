"""The speaker map: ranking, the cap, the JSON file (ours and the original tool's), and `resolve`."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from fizzbot.chat.speakers import OTHERS_NAME, SpeakerMap, build_speaker_map


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
    assert smap.other_token is None and smap.tokens == [f"<S{i}>" for i in range(5)]
    assert smap.token_for_author("bob") == "<S2>"
    with pytest.raises(KeyError, match="nobody"):
        smap.token_for_author("nobody")  # no shared token: an unknown author is an error


def test_ranking_does_not_depend_on_counter_order():
    forward = Counter({f"a{i:02d}": i % 4 + 1 for i in range(30)})
    backward = Counter(dict(reversed(list(forward.items()))))
    usernames = {a: a for a in forward}
    assert build_speaker_map(forward, usernames, 8).to_json() == build_speaker_map(backward, usernames, 8).to_json()


def test_exactly_max_speakers_needs_no_shared_token():
    counts, usernames = names(a=3, b=2, c=1)
    smap = build_speaker_map(counts, usernames, max_speakers=3)
    assert smap.tokens == ["<S0>", "<S1>", "<S2>"] and smap.other_token is None


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
    assert doc["other"] == {"token": "<S3>", "authors": 7, "messages": smap.other_messages}
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
