"""The layout of docs/architecture.md holds: inference never imports training, imports run one way with
no cycle, the library never imports the command line, every package ships, and no module outgrows a
sitting."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "nmt"

# What translating, serving, exporting and pictures may never load: the trainer and its jobs.
TRAINING = ("nmt.train", "nmt.pipeline")
INFERENCE = ("nmt.translator", "nmt.files", "nmt.evaluate", "nmt.decode", "nmt.search", "nmt.precision",
             "nmt.export", "nmt.visualize", "nmt.serve", "nmt.model", "nmt.checkpoint", "nmt.tokenizer",
             "nmt.data", "nmt.config")
# Training sees neither decoding nor scoring: validation BLEU is a callable its caller passes.
NOT_FROM_TRAINING = ("nmt.decode", "nmt.search", "nmt.translator", "nmt.files", "nmt.evaluate", "nmt.serve",
                     "nmt.export", "nmt.visualize", "nmt.pipeline")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in LIBRARY.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of nmt (and others, by their top name) that `path` imports, anywhere in the file."""
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from nmt.train import optim` imports the module nmt.train.optim
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` but those under `if TYPE_CHECKING:` (imports for annotations only)."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
            continue
        yield child
        yield from _runtime_nodes(child)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_inference_modules_never_import_training() -> None:
    graph = _graph()
    for module, imported in graph.items():
        if _within(module, INFERENCE):
            assert not any(_within(i, TRAINING) for i in imported), (module, sorted(imported))
        if _within(module, ("nmt.train",)):
            assert not any(_within(i, NOT_FROM_TRAINING) for i in imported), (module, sorted(imported))


def test_loading_a_server_export_or_pictures_loads_no_training_code() -> None:
    code = ("import sys, nmt.serve, nmt.export, nmt.visualize, nmt.files, nmt.evaluate; from nmt import Translator; "
            "print(sorted(m for m in sys.modules if m == 'nmt.pipeline' or m.startswith('nmt.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_import_graph_has_no_cycle_and_the_library_never_imports_the_command_line() -> None:
    graph = _graph()
    for module, imported in graph.items():
        assert not any(i.split(".")[0] in ("nmt_cli", "cli", "typer") for i in imported), module
    inside = {m: {i for i in imported if i in graph and i != m} for m, imported in graph.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        for child in sorted(inside[module]):
            visit(child, path + [module])
        done.add(module)
    for module in sorted(inside):
        visit(module, [])


def test_every_package_ships() -> None:
    """A directory of modules without __init__.py would be left out of the wheel by find_packages."""
    packages = set(find_packages(str(ROOT), include=["nmt", "nmt.*"]))
    directories = {_module_name(p.parent / "__init__.py") for p in LIBRARY.rglob("*.py")}
    assert directories <= packages, sorted(directories - packages)
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert 'find_packages(include=["nmt", "nmt.*"])' in setup and '"nmt_cli": "cli"' in setup


def test_no_module_outgrows_a_sitting() -> None:
    """About 450 lines of code at most (blank and comment-only lines not counted); a larger room
    becomes a package whose files name its jobs."""
    for path in LIBRARY.rglob("*.py"):
        code = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.strip().startswith("#")]
        assert len(code) <= 450, f"{path.relative_to(ROOT)}: {len(code)} lines of code"
