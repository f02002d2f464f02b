"""The speaker map: who gets which speaker token, and who speaks under the shared one.

The most active authors (over the whole corpus, after cleaning) get `<S0>`, `<S1>`, ... in order; the
token right after them, the *others* token, is shared by everyone else: the long tail past
`max_speakers` (the cap counts every token, the others token included) and, when the model serves,
anyone it has never seen (the *guest*). A newcomer is exactly what the long tail is, someone the
model has seen too little of to know individually, and that token is trained on their messages, so
the two are one token. A fresh map always has it, even when every author fits under the cap.

The map is keyed on the export's author id (usernames change; ids do not) and says which username
each token stands for. Built on top of an earlier map (`data.speaker_map`), every earlier assignment
stays, new authors are appended after every existing token while the cap allows, and the others
token keeps its index. A person who opts out (`data.exclude_speakers`) never has a token: an earlier
token of theirs is *retired*, kept so that no one else moves, and never used again.

With `data.name_others` the others token's messages carry their author's name (`<S63> alice: text`,
`fizzbot.chat.render.with_name`), and the map says so (`other.named`): the long tail is told apart,
a reply can name whoever it answers, and the model names who of the long tail speaks next.

It also reads the original tool's flat `{"<S0>": "alice"}` (or `{"alice": "<S0>"}`) files, which have
no others token: with such a map an unknown speaker cannot take the guest token.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fizzbot.chat.tokens import EOT, SPEAKER_TOKEN_RE, speaker_index, speaker_token

OTHERS_NAME = "(others)"
OPTED_OUT_NAME = "(opted out)"
FORMAT_TAG = "fizzbot-speaker-map/1"
UnknownSpeakers = Literal["guest", "reject"]


@dataclass
class Speaker:
    token: str
    username: str
    author_id: str | None = None
    messages: int = 0
    retired: bool = False  # an opted-out person's earlier token: held so no one moves, never used


@dataclass
class SpeakerMap:
    speakers: list[Speaker]  # the own tokens (retired ones included), in index order
    other_token: str | None = None  # the shared others token: the long tail, and guests when serving
    other_authors: int = 0
    other_messages: int = 0
    other_named: bool = False  # the others token's messages start with their author's name (data.name_others)
    _by_author: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_author = {s.author_id: s.token for s in self.speakers if s.author_id is not None and not s.retired}

    # --- lookups -----------------------------------------------------------------------------
    def token_for_author(self, author_id: str) -> str:
        token = self._by_author.get(author_id)
        if token is not None:
            return token
        if self.other_token is None:
            raise KeyError(f"author {author_id!r} has no speaker token")
        return self.other_token

    @property
    def tokens(self) -> list[str]:
        """Every speaker token, in index order (the others token of a grown map sits among them)."""
        tokens = [s.token for s in self.speakers]
        if self.other_token is not None:
            tokens.append(self.other_token)
        return sorted(tokens, key=speaker_index)

    @property
    def speakable_tokens(self) -> list[str]:
        """The tokens the model may speak as: every token but retired ones."""
        retired = {s.token for s in self.speakers if s.retired}
        return [t for t in self.tokens if t not in retired]

    @property
    def guest_token(self) -> str | None:
        """The token an unknown speaker takes: the shared others token (None for a flat map)."""
        return self.other_token

    def token_to_username(self) -> dict[str, str]:
        table = {s.token: (OPTED_OUT_NAME if s.retired else s.username) for s in self.speakers}
        if self.other_token is not None:
            table[self.other_token] = OTHERS_NAME
        return table

    def lookup(self, name_or_token: str) -> str | None:
        """A username or a speaker token -> its token; None for a name the map does not know.

        Usernames match exactly first, then case-insensitively; a speaker token must be one of the
        map's; a name that several speakers share is an error (give the token instead).
        """
        name = name_or_token.strip()
        if SPEAKER_TOKEN_RE.fullmatch(name):
            if name in self.tokens:
                return name
            raise KeyError(f"unknown speaker token {name}; valid tokens are {self.tokens[0]}..{self.tokens[-1]}")
        live = [s for s in self.speakers if not s.retired]
        matches = [s.token for s in live if s.username == name]
        if not matches:
            matches = [s.token for s in live if s.username.lower() == name.lower()]
        if len(matches) > 1:
            raise KeyError(f"username {name!r} is ambiguous ({', '.join(matches)}); give the token instead")
        return matches[0] if matches else None

    def token_for_name(self, name_or_token: str, unknown: UnknownSpeakers = "reject") -> str:
        """The token of a username or token; an unknown name takes the guest token (`guest`) or is an
        error that lists the known speakers (`reject`)."""
        token = self.lookup(name_or_token)
        if token is not None:
            return token
        if unknown == "guest":
            return self.require_guest(f"speaker {name_or_token.strip()!r}")
        raise KeyError(f"unknown speaker {name_or_token.strip()!r}; known speakers: {self.known_names()}")

    def resolve(self, name_or_token: str) -> str:
        """A username or a speaker token -> the token; unknown names list the valid ones."""
        return self.token_for_name(name_or_token, "reject")

    def require_guest(self, who: str) -> str:
        """The guest token, or an error saying why `who` cannot take it."""
        if self.other_token is None:
            raise KeyError(
                f"{who} is not in this speaker map, and the map has no shared others token for unknown "
                f"speakers to take (a map from the original tool); use a known speaker: {self.known_names()}"
            )
        return self.other_token

    def known_names(self, limit: int = 20) -> str:
        live = [s.username for s in self.speakers if not s.retired]
        more = f" (and {len(live) - limit} more)" if len(live) > limit else ""
        return ", ".join(live[:limit]) + more

    def diff(self, other: "SpeakerMap", here: str = "here", there: str = "there", *, grown: bool = False) -> str | None:
        """None when both maps give every token the same meaning (the same author id, the others
        token, a retired slot); otherwise what differs, in one line ("<S1> is author 'u2' (bob) in the
        checkpoint but missing in the data"). Usernames and counts may differ. With `grown`, `other`
        may also have tokens this map lacks and retire people this map had (a stable map grown from
        this one: continuing a model on it keeps every token's person)."""
        mine, theirs = self._meanings(), other._meanings()
        differences = []
        for token in sorted(set(mine) | set(theirs), key=speaker_index):
            a, b = mine.get(token), theirs.get(token)
            if grown and (a is None or (b is not None and b[0] == ("retired",))):
                continue
            if (a and a[0]) != (b and b[0]):
                differences.append(f"{token} is {a[1] if a else 'missing'} {here} but {b[1] if b else 'missing'} {there}")
        if not differences:
            return None
        shown = "; ".join(differences[:5])
        more = f"; and {len(differences) - 5} more" if len(differences) > 5 else ""
        return f"{len(differences)} speaker token(s) differ: {shown}{more}"

    def _meanings(self) -> dict[str, tuple[tuple, str]]:
        """token -> (what identifies its meaning, how to say it)."""
        out: dict[str, tuple[tuple, str]] = {}
        for s in self.speakers:
            if s.retired:
                out[s.token] = (("retired",), "retired (opted out)")
            else:
                out[s.token] = (("author", s.author_id), f"author {s.author_id!r} ({s.username})")
        if self.other_token is not None:
            out[self.other_token] = (
                ("others", self.other_named),
                "the shared others token" + (", its messages named" if self.other_named else ""),
            )
        return out

    # --- files -------------------------------------------------------------------------------
    def to_json(self) -> dict:
        speakers = []
        for s in self.speakers:
            entry = {"token": s.token, "username": s.username, "author_id": s.author_id, "messages": s.messages}
            if s.retired:
                entry["retired"] = True
            speakers.append(entry)
        return {
            "format": FORMAT_TAG,
            "eot_token": EOT,
            "speakers": speakers,
            "other": (
                {"token": self.other_token, "authors": self.other_authors, "messages": self.other_messages,
                 "named": self.other_named}
                if self.other_token
                else None
            ),
            "token_to_username": self.token_to_username(),
        }

    @classmethod
    def from_json(cls, data: dict, source: str = "speaker map") -> "SpeakerMap":
        if not isinstance(data, dict) or not data:
            raise ValueError(f"{source}: expected a JSON object mapping speaker tokens to usernames")
        if data.get("format") == FORMAT_TAG:
            speakers = [
                Speaker(s["token"], s["username"], s.get("author_id"), s.get("messages", 0), bool(s.get("retired", False)))
                for s in data["speakers"]
            ]
            other = data.get("other") or {}
            return cls(speakers, other.get("token"), other.get("authors", 0), other.get("messages", 0), bool(other.get("named", False)))
        # The original tool's flat map, in either direction.
        pairs = []
        for key, value in data.items():
            if not isinstance(value, str):
                raise ValueError(f"{source}: value of {key!r} is not a string")
            if SPEAKER_TOKEN_RE.fullmatch(key):
                pairs.append((key, value))
            elif SPEAKER_TOKEN_RE.fullmatch(value):
                pairs.append((value, key))
            else:
                raise ValueError(f"{source}: entry {key!r}: {value!r} holds no speaker token like <S0>")
        pairs.sort(key=lambda p: speaker_index(p[0]))
        return cls([Speaker(token, name, author_id=name) for token, name in pairs])

    def save(self, path: str | Path) -> None:
        from fizzbot.artifacts.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "SpeakerMap":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: speaker map not found") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from None
        return cls.from_json(data, str(path))


def build_speaker_map(
    counts: Counter,
    usernames: dict[str, str],
    max_speakers: int,
    previous: SpeakerMap | None = None,
    excluded: frozenset[str] | set[str] = frozenset(),
    name_others: bool = False,
) -> SpeakerMap:
    """Hand out speaker tokens: the most active authors first (ties by id, so the map is
    reproducible), the others token right after them.

    With `previous`, every author it names keeps their token (with the username they have now), new
    authors are appended after every existing token while `max_speakers` allows, and the rest share
    the previous others token (one is appended first if the previous map had none). `excluded`
    author ids never get a token; a token `previous` gave one of them is retired. `name_others`: the
    others token's messages carry their author's name (data.name_others).
    """
    ranked = sorted(((a, n) for a, n in counts.items() if a not in excluded), key=lambda item: (-item[1], item[0]))
    if previous is None:
        own = ranked[: max_speakers - 1]
        speakers = [Speaker(speaker_token(i), usernames.get(a, a), a, n) for i, (a, n) in enumerate(own)]
        rest = ranked[len(own):]
        return SpeakerMap(speakers, speaker_token(len(own)), len(rest), sum(n for _, n in rest), name_others)

    speakers = []
    for s in previous.speakers:
        if s.retired or s.author_id in excluded:
            speakers.append(Speaker(s.token, OPTED_OUT_NAME, None, 0, retired=True))
        else:
            speakers.append(Speaker(s.token, usernames.get(s.author_id, s.username), s.author_id, counts.get(s.author_id, 0)))
    known = {s.author_id for s in previous.speakers if s.author_id is not None}
    next_index = max((speaker_index(t) for t in previous.tokens), default=-1) + 1
    other_token = previous.other_token
    if other_token is None:
        other_token = speaker_token(next_index)
        next_index += 1
    # Tokens the previous map holds are never taken away, even where it holds more than the cap.
    room = max(0, max(max_speakers, next_index) - next_index)
    new = [(a, n) for a, n in ranked if a not in known]
    speakers += [Speaker(speaker_token(next_index + i), usernames.get(a, a), a, n) for i, (a, n) in enumerate(new[:room])]
    rest = new[room:]
    return SpeakerMap(speakers, other_token, len(rest), sum(n for _, n in rest), name_others)


def growth(previous: SpeakerMap, current: SpeakerMap) -> dict[str, int]:
    """How `current`, built on `previous`, differs: speakers kept, appended and retired (the
    authors sharing the others token are `current.other_authors`)."""
    before = {s.token for s in previous.speakers if not s.retired}
    existing = set(previous.tokens)
    return {
        "kept": sum(1 for s in current.speakers if s.token in before and not s.retired),
        "appended": sum(1 for s in current.speakers if s.token not in existing),
        "retired": sum(1 for s in current.speakers if s.retired and s.token in before),
    }
