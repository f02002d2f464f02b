"""The row every reader produces, the error every reader raises, and the helpers they share."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

SPEAKER_TOKEN_RE = re.compile(r"<S(\d+)>")
EOT = "<EOT>"
# Text that a user typed and that looks like one of our special tokens must not become one.
_SPECIAL_LOOKALIKE_RE = re.compile(r"<(S\d+|EOT)>")


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


class InputError(ValueError):
    """Bad input, located: `path:line: field: what is wrong`."""

    def __init__(self, message: str, *, path: str, line: int | None = None, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = self.path + (f":{line}" if line is not None else "")
        what = f"{field}: {message}" if field else message
        super().__init__(f"{where}: {what}")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "field": self.field, "error": self.reason}

    def __reduce__(self):
        # Exceptions pickle as cls(*args); `path` is keyword-only, so say how to rebuild this one
        # (a Ray worker's InputError must arrive in the driver as itself).
        return _rebuild_input_error, (type(self), self.reason, self.path, self.line, self.field)


def _rebuild_input_error(cls: type, message: str, path: str, line: int | None, field: str | None) -> InputError:
    return cls(message, path=path, line=line, field=field)


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


def defuse_special_tokens(text: str) -> str:
    """A user who types "<S3>" or "<EOT>" must not produce a speaker change: "< S3>" reads the same."""
    if "<" not in text:
        return text
    return _SPECIAL_LOOKALIKE_RE.sub(lambda m: f"< {m.group(1)}>", text)


def clean_content(text: str, max_chars: int) -> str:
    """Edge whitespace off, typed look-alikes of special tokens defused, over-long text cut."""
    text = defuse_special_tokens(text.strip())
    if len(text) > max_chars:
        text = text[:max_chars].rstrip() + " …"
    return text
