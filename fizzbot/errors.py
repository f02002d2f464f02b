"""Errors every stage shares: bad input, located in the user's file."""

from __future__ import annotations

from typing import Any


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
