"""The import layering of docs/ARCHITECTURE.md, checked on the source (function-level imports too).

Contracts (`chat`, `artifacts`) and `model` sit under the stages; `data` and `train` never reach
into `infer` or `serve`, and those never reach into `data` or `train`. `eval` is a top-level stage
(it loads checkpoints, scores with training's objective, generates with the engine), except its
measures (`fizzbot/eval/measures.py`), which import no stage so that training can call them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fizzbot"

FORBIDDEN = {
    "chat": ("data", "train", "infer", "serve", "model", "eval"),
    "artifacts": ("data", "train", "infer", "serve", "eval"),
    "model": ("data", "train", "infer", "serve", "eval"),
    "data": ("train", "infer", "serve"),
    "train": ("data", "infer", "serve"),
    "infer": ("data", "train", "serve"),
    "serve": ("data", "train"),
    "eval": ("data", "serve"),
}
# Modules that import nothing of fizzbot but the contracts: any stage may use them.
PURE = {"eval/measures.py": ("chat",)}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from fizzbot import train`, `from fizzbot.eval import measures`: the alias names the module
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.append((node.lineno, candidate if _is_module(candidate) else node.module))
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_it_may(layer):
    offences = []
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files, f"fizzbot/{layer} has no modules"
    for path in files:
        for line, module in imported_modules(path):
            parts = module.split(".")
            if parts[0] != "fizzbot" or len(parts) < 2:
                continue
            # The one door into `eval` for the layers under it: the pure measures.
            into_eval = parts[1] == "eval" and layer != "eval" and module != "fizzbot.eval.measures"
            if parts[1] in FORBIDDEN[layer] or into_eval:
                offences.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not offences, "layering broken:\n" + "\n".join(offences)


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_import_only_the_contracts(module):
    path = PACKAGE / module
    allowed = PURE[module]
    offences = [
        f"{module}:{line} imports {name}"
        for line, name in imported_modules(path)
        if name.startswith("fizzbot") and (name == "fizzbot" or name.split(".")[1] not in allowed)
    ]
    assert not offences, "a pure module imports a stage:\n" + "\n".join(offences)


def test_the_checker_sees_function_level_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from fizzbot.train.loop import x\n    import fizzbot.data.windows\n")
    assert [m for _, m in imported_modules(sample)] == ["fizzbot.train.loop", "fizzbot.data.windows"]


def test_the_checker_reads_the_module_an_alias_names(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from fizzbot.eval import measures, run\nfrom fizzbot.eval.measures import Tally\nfrom fizzbot import train\n")
    assert [m for _, m in imported_modules(sample)] == ["fizzbot.eval.measures", "fizzbot.eval.run", "fizzbot.eval.measures", "fizzbot.train"]
