"""Errors every stage shares: bad input, located in the user's file."""

from __future__ import annotations

import re
from typing import Any

_INDEX_RE = re.compile(r"\[\d+\]")


class InputError(ValueError):
    """Bad input, located: `path:line: field: what is wrong`.

    `kind` names the problem without its particulars (which record, which value), so that skipped
    records can be counted per kind: given by the raiser, or else the field within its record and the
    message up to its first colon (`timestamp: missing`, `not an IRC line of a known shape`).
    """

    def __init__(
        self, message: str, *, path: str, line: int | None = None, field: str | None = None, kind: str | None = None
    ):
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = message
        self.kind = kind or _default_kind(message, field)
        where = self.path + (f":{line}" if line is not None else "")
        what = f"{field}: {message}" if field else message
        super().__init__(f"{where}: {what}")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "field": self.field, "error": self.reason, "kind": self.kind}

    def __reduce__(self):
        # Exceptions pickle as cls(*args); `path` is keyword-only, so say how to rebuild this one
        # (a Ray worker's InputError must arrive in the driver as itself).
        return _rebuild_input_error, (type(self), self.reason, self.path, self.line, self.field, self.kind)


def _default_kind(message: str, field: str | None) -> str:
    head = message.split(":", 1)[0].split(" (", 1)[0].strip()
    if not field:
        return head
    # `messages[12].author.id` -> `author.id`: the field within its record, whichever record it was.
    leaf = _INDEX_RE.sub("[]", field).rsplit("].", 1)[-1]
    return f"{leaf}: {head}"


def _rebuild_input_error(
    cls: type, message: str, path: str, line: int | None, field: str | None, kind: str | None = None
) -> InputError:
    return cls(message, path=path, line=line, field=field, kind=kind)
