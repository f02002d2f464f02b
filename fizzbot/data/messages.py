"""The row every reader produces, and the helpers readers share (timestamps, content normalisation)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from fizzbot.chat.render import clean_text
from fizzbot.errors import InputError  # noqa: F401  (readers raise it from here)


@dataclass(slots=True)
class Message:
    """One chat message, normalised. `ts` is UTC epoch seconds; `order` keeps file order for ties."""

    channel: str
    author_id: str
    username: str
    content: str
    ts: float
    order: int = 0
    is_bot: bool = False
    is_system: bool = False
    # Which reader produced it: the filters use each format's own mention syntax.
    format: str = "seed"

    def sort_key(self) -> tuple[float, int]:
        return (self.ts, self.order)


@dataclass
class ReadOptions:
    """What readers need from the config, and where they report bad records under `on_error: skip`."""

    on_error: str = "fail"
    irc_channel: str | None = None
    max_message_chars: int = 2000
    errors: list[InputError] = field(default_factory=list)

    def bad(self, error: InputError) -> None:
        """Report a bad record: raise under `fail`, remember and go on under `skip`."""
        if self.on_error == "fail":
            raise error
        self.errors.append(error)


def parse_timestamp(value: Any, *, path: str, line: int | None, field: str = "timestamp") -> float:
    """ISO 8601 (offset or none: none means UTC), epoch seconds, or epoch milliseconds -> epoch seconds."""
    if isinstance(value, bool) or value is None:
        raise InputError(f"expected a timestamp, got {value!r}", path=path, line=line, field=field)
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is None:
            try:
                parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise InputError(f"not an ISO 8601 date or epoch number: {value!r}", path=path, line=line, field=field) from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.timezone.utc)
            return parsed.timestamp()
    else:
        raise InputError(f"expected a timestamp, got {type(value).__name__}", path=path, line=line, field=field)
    # Epoch milliseconds are 1000x larger than any plausible epoch-seconds value (year 5000+).
    if abs(number) > 1e11:
        number /= 1000.0
    return number


def clean_content(text: str, max_chars: int) -> str:
    """Edge whitespace off, typed look-alikes of special tokens defused, over-long text cut: the
    chat contract's rule (fizzbot.chat.render.clean_text), which served contexts follow too."""
    return clean_text(text, max_chars)
