"""The import layering of docs/ARCHITECTURE.md, checked on the source (function-level imports too).

Contracts (`chat`, `artifacts`) and `model` sit under the stages; `data` and `train` never reach
into `infer` or `serve`, and those never reach into `data` or `train`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fizzbot"

FORBIDDEN = {
    "chat": ("data", "train", "infer", "serve", "model"),
    "artifacts": ("data", "train", "infer", "serve"),
    "model": ("data", "train", "infer", "serve"),
    "data": ("train", "infer", "serve"),
    "train": ("data", "infer", "serve"),
    "infer": ("data", "train", "serve"),
    "serve": ("data", "train"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from fizzbot import train` names the module in the alias
            if node.module == "fizzbot":
                found.extend((node.lineno, f"fizzbot.{alias.name}") for alias in node.names)
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_it_may(layer):
    offences = []
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files, f"fizzbot/{layer} has no modules"
    for path in files:
        for line, module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "fizzbot" and len(parts) > 1 and parts[1] in FORBIDDEN[layer]:
                offences.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not offences, "layering broken:\n" + "\n".join(offences)


def test_the_checker_sees_function_level_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from fizzbot.train.loop import x\n    import fizzbot.data.windows\n")
    assert [m for _, m in imported_modules(sample)] == ["fizzbot.train.loop", "fizzbot.data.windows"]
