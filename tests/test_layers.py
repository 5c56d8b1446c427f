"""One-way layers: ``methods`` is a torch-only library; ``analysis`` reads MLflow, nothing more.

``experiments`` (data, loop, diagnostics, tracking, entry point) imports ``methods``; ``methods``
never imports the harness, the analysis, Hydra or MLflow; ``analysis`` never imports ``methods``
or the training loop (of the harness it uses ``experiments.tracking`` only, to read the store).
Checked on the source, every ``import`` statement wherever it stands (inside functions too), and
at run time, on the modules a fresh interpreter has loaded after importing the package.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Top-level packages methods/ must never import.
METHODS_FORBIDDEN = ("experiments", "analysis", "hydra", "mlflow", "omegaconf")
# What analysis/ must never import; of experiments, only these modules are allowed.
ANALYSIS_FORBIDDEN = ("methods", "experiments.loop", "experiments.train")
ANALYSIS_ALLOWED_EXPERIMENTS = ("experiments.tracking",)


def imported_names(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of everything a module imports, at any depth of its code.

    ``import a.b`` gives ``a.b``; ``from a import b`` gives ``a.b`` (``b`` may be a module);
    relative imports are resolved against the module's package; ``importlib.import_module`` and
    ``__import__`` calls with a constant string count too.
    """
    package = list(path.relative_to(root).parts[:-1])  # e.g. methods/networks/mlp.py: 2 parts
    tree = ast.parse(path.read_text(), str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__") and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    names.append((node.lineno, first.value))
    return names


def within(name: str, prefix: str) -> bool:
    """Whether dotted ``name`` is ``prefix`` or inside it."""
    return name == prefix or name.startswith(f"{prefix}.")


def sources(folder: str) -> list[Path]:
    paths = sorted((ROOT / folder).rglob("*.py"))
    assert paths, folder
    return paths


def test_the_import_parser_sees_every_kind_of_import(tmp_path):
    module = tmp_path / "methods" / "networks" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "import torch\n"
        "from torch import nn\n"
        "def late():\n"
        "    import mlflow.entities\n"
        "    from experiments import loop\n"
        "    from ..base import Method\n"
        "    from . import mlp\n"
        "    importlib.import_module('hydra.utils')\n"
    )
    assert [name for _, name in imported_names(module, root=tmp_path)] == [
        "torch",
        "torch.nn",
        "mlflow.entities",
        "experiments.loop",
        "methods.base.Method",
        "methods.networks.mlp",
        "hydra.utils",
    ]


@pytest.mark.parametrize("path", sources("methods"), ids=lambda p: str(p.relative_to(ROOT)))
def test_methods_import_nothing_from_the_harness_analysis_hydra_or_mlflow(path):
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for line, name in imported_names(path)
        if any(within(name, forbidden) for forbidden in METHODS_FORBIDDEN)
    ]
    assert not bad, bad


@pytest.mark.parametrize("path", sources("analysis"), ids=lambda p: str(p.relative_to(ROOT)))
def test_analysis_imports_neither_methods_nor_the_loop(path):
    bad = []
    for line, name in imported_names(path):
        forbidden = any(within(name, f) for f in ANALYSIS_FORBIDDEN)
        harness = within(name, "experiments") and not any(
            within(name, allowed) for allowed in ANALYSIS_ALLOWED_EXPERIMENTS
        )
        if forbidden or harness:
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, bad


def loaded_after_import(*modules: str) -> set[str]:
    """Names in ``sys.modules`` of a fresh interpreter (run from the repository) after imports."""
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print(*sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_importing_methods_loads_no_harness_analysis_hydra_or_mlflow():
    loaded = loaded_after_import("methods")
    assert "methods.networks" in loaded and "methods.losses" in loaded
    bad = sorted(m for m in loaded for f in METHODS_FORBIDDEN if within(m, f))
    assert not bad, bad


def test_importing_analysis_loads_neither_methods_nor_the_loop():
    modules = [f"analysis.{p.stem}" for p in sources("analysis") if p.stem != "__init__"]
    loaded = loaded_after_import(*modules)
    assert set(modules) <= loaded
    bad = sorted(m for m in loaded for f in ANALYSIS_FORBIDDEN if within(m, f))
    assert not bad, bad
