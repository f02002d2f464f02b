"""The speaker map: who gets which speaker token.

The most active authors (over the whole corpus, after cleaning) get `<S0>`, `<S1>`, ... in order; when
there are more authors than `max_speakers`, the last token is shared by everyone else. The map is
keyed on the export's author id (usernames change; ids do not) and says which username each token
stands for. It also reads the original tool's flat `{"<S0>": "alice"}` (or `{"alice": "<S0>"}`) files.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fizzbot.chat.tokens import EOT, SPEAKER_TOKEN_RE, speaker_token

OTHERS_NAME = "(others)"
FORMAT_TAG = "fizzbot-speaker-map/1"


@dataclass
class Speaker:
    token: str
    username: str
    author_id: str | None = None
    messages: int = 0


@dataclass
class SpeakerMap:
    speakers: list[Speaker]
    other_token: str | None = None
    other_authors: int = 0
    other_messages: int = 0
    _by_author: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_author = {s.author_id: s.token for s in self.speakers if s.author_id is not None}

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
        """Every speaker token, in index order."""
        tokens = [s.token for s in self.speakers]
        if self.other_token is not None:
            tokens.append(self.other_token)
        return tokens

    def token_to_username(self) -> dict[str, str]:
        table = {s.token: s.username for s in self.speakers}
        if self.other_token is not None:
            table[self.other_token] = OTHERS_NAME
        return table

    def resolve(self, name_or_token: str) -> str:
        """A username or a speaker token -> the token; unknown names list the valid ones."""
        name = name_or_token.strip()
        if SPEAKER_TOKEN_RE.fullmatch(name):
            if name in self.tokens:
                return name
            raise KeyError(f"unknown speaker token {name}; valid tokens are {self.tokens[0]}..{self.tokens[-1]}")
        matches = [s.token for s in self.speakers if s.username == name]
        if not matches:
            matches = [s.token for s in self.speakers if s.username.lower() == name.lower()]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise KeyError(f"username {name!r} is ambiguous ({', '.join(matches)}); give the token instead")
        known = ", ".join(s.username for s in self.speakers[:20])
        more = f" (and {len(self.speakers) - 20} more)" if len(self.speakers) > 20 else ""
        raise KeyError(f"unknown speaker {name!r}; known speakers: {known}{more}")

    # --- files -------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format": FORMAT_TAG,
            "eot_token": EOT,
            "speakers": [
                {"token": s.token, "username": s.username, "author_id": s.author_id, "messages": s.messages}
                for s in self.speakers
            ],
            "other": (
                {"token": self.other_token, "authors": self.other_authors, "messages": self.other_messages}
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
            speakers = [Speaker(s["token"], s["username"], s.get("author_id"), s.get("messages", 0)) for s in data["speakers"]]
            other = data.get("other") or {}
            return cls(speakers, other.get("token"), other.get("authors", 0), other.get("messages", 0))
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
        pairs.sort(key=lambda p: int(SPEAKER_TOKEN_RE.fullmatch(p[0]).group(1)))
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


def build_speaker_map(counts: Counter, usernames: dict[str, str], max_speakers: int) -> SpeakerMap:
    """Rank authors by message count (ties by id, so the map is reproducible) and hand out tokens."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    own = ranked if len(ranked) <= max_speakers else ranked[: max_speakers - 1]
    speakers = [Speaker(speaker_token(i), usernames.get(a, a), a, n) for i, (a, n) in enumerate(own)]
    rest = ranked[len(own):]
    if not rest:
        return SpeakerMap(speakers)
    return SpeakerMap(speakers, speaker_token(len(own)), len(rest), sum(n for _, n in rest))
