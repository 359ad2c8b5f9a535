"""The shape of the package, held by tests: no import cycle between adaptune modules (counting imports inside
functions too), `names` a leaf, light modules that import no torch, transformers, Ray or MLflow, and
function-local imports only where they keep such a library out of a light path."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .support import REPO

pytestmark = pytest.mark.unit

PACKAGE = REPO / "platform" / "adaptune"
# What a light path must not import, and what a function-local import may therefore keep out of one
HEAVY = (
    "torch",
    "transformers",
    "ray",
    "mlflow",
    "deepspeed",
    "peft",
    "bitsandbytes",
    "datasets",
    "optuna",
    "torchmetrics",
)
LAZY_OK = {*HEAVY, "matplotlib", "pandas", "safetensors", "huggingface_hub", "tokenizers", "pyarrow", "psutil"}
# Modules that import a heavy library at the top by design: they run only inside Ray Train workers, or are the
# file MLflow runs when it loads a logged model
HEAVY_MODULES = {"adaptune.worker.model", "adaptune.worker.train_loop", "adaptune.tracking.model_code"}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _module_of(dotted: str) -> str | None:
    """The adaptune module an import names (`adaptune.names.X` -> `adaptune.names`)."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import statement of `module`."""
    out = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, local) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                out.append((child.module, child.lineno, local))
                out.extend((f"{child.module}.{a.name}", child.lineno, local) for a in child.names)
            visit(child, inside)

    visit(ast.parse(MODULES[module].read_text(encoding="utf-8")), False)
    return out


def _graph() -> dict[str, set[str]]:
    return {
        m: {d for name, _, _ in _imports(m) if name.startswith("adaptune") and (d := _module_of(name)) not in (None, m)}
        for m in MODULES
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return [*path[path.index(d) :], d]
            if d not in state and (found := visit(d)):
                return found
        state[m] = 2
        path.pop()
        return None

    return next((c for m in sorted(graph) if m not in state and (c := visit(m))), None)


def test_no_import_cycle_between_adaptune_modules_even_inside_functions():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_names_is_a_leaf_and_records_import_only_the_schema_and_names():
    graph = _graph()
    assert graph["adaptune.names"] == set()
    assert graph["adaptune.records"] <= {"adaptune.config", "adaptune.names", "adaptune"}


def test_function_local_imports_only_keep_heavy_libraries_out():
    """A function-local import is there to keep a heavy library (or an adaptune module that imports one at the
    top) out of the import of a light module; anything else belongs at the top of the file."""
    stray = []
    for m in MODULES:
        if m == "adaptune.tracking.model_code":  # the file MLflow stores and runs on its own
            continue
        for name, line, local in _imports(m):
            if not local:
                continue
            inner = _module_of(name) if name.startswith("adaptune") else None
            ok = inner in HEAVY_MODULES and m not in HEAVY_MODULES if inner else name.split(".")[0] in LAZY_OK
            if not ok:
                stray.append(f"{MODULES[m].relative_to(REPO)}:{line} imports {name} inside a function")
    assert not stray, "\n".join(stray)


def test_light_modules_import_no_torch_transformers_ray_or_mlflow():
    light = sorted(set(MODULES) - HEAVY_MODULES - {"adaptune.__main__"})  # __main__ runs the CLI
    code = (
        "import importlib, json, sys\n"
        f"heavy = {HEAVY!r}\n"
        "out = {}\n"
        f"for m in {light!r}:\n"
        "    importlib.import_module(m)\n"
        "    out[m] = sorted({k.split('.')[0] for k in sys.modules} & set(heavy))\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO / "platform"), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    first = next(((m, h) for m, h in seen.items() if h), None)  # in import order: the first one pulled it in
    assert first is None, f"{first[0]} imports {', '.join(first[1])}"
