"""The package's layers, checked by reading every module's imports (issue 16's contract).

Lowest first; a module imports only its own layer and lower ones:

    core         config, tags
    data         data, synthetic
    models       models
    train        transforms, losses, metrics, engine, sliding, plan, visualize
    tracking     tracking, registry
    serve        inference, pyfunc_model (the search scores its test split through it)
    distributed  worker
    search       spaces, asha, live (the spec, the schedulers, the live view)
    report       report (it reads the spec; the search driver writes it at a search's end)
    driver       search
    cli          cli, jobs

`models` and `train` (and below) import neither Ray nor MLflow: arrays from the object store
are handed to them by the worker. Nothing imports `cli`. The package's ``__init__`` only
re-exports (``load_model``, lazily) and is not a layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "unet_search"
LAYERS = (
    ("core", ("config", "tags")),
    ("data", ("data", "synthetic")),
    ("models", ("models",)),
    ("train", ("transforms", "losses", "metrics", "engine", "sliding", "plan", "visualize")),
    ("tracking", ("tracking", "registry")),
    ("serve", ("inference", "pyfunc_model")),
    ("distributed", ("worker",)),
    ("search", ("spaces", "asha", "live")),
    ("report", ("report",)),
    ("driver", ("search",)),
    ("cli", ("cli", "jobs")),
)
LEVEL = {module: level for level, (_, modules) in enumerate(LAYERS) for module in modules}
NO_RAY_OR_MLFLOW_UP_TO = 3  # core .. train


def _imports(source: str) -> list[tuple[str, int]]:
    """(module, line) of every import in ``source``: ``unet_search.x`` as ``x``, others as
    their top-level package; imports inside functions count too."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "unet_search":
                found += [(alias.name, node.lineno) for alias in node.names]
            elif node.module.startswith("unet_search."):
                found.append((node.module.split(".")[1], node.lineno))
            else:
                found.append((node.module.split(".")[0], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
    return found


def violations(module: str, source: str) -> list[str]:
    """What in ``module``'s ``source`` breaks the contract, one line each."""
    out = []
    level = LEVEL[module]
    for name, line in _imports(source):
        if name in LEVEL and LEVEL[name] > level:
            out.append(
                f"{module}.py:{line} imports {name} ({LAYERS[LEVEL[name]][0]}), a layer above "
                f"its own ({LAYERS[level][0]})"
            )
        if name in ("ray", "mlflow") and level <= NO_RAY_OR_MLFLOW_UP_TO:
            out.append(f"{module}.py:{line} imports {name} in layer {LAYERS[level][0]}")
        if name == "cli" and module != "cli":
            out.append(f"{module}.py:{line} imports cli")
    return out


def test_every_module_has_a_layer() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(LEVEL), (modules - set(LEVEL), set(LEVEL) - modules)


def test_no_module_imports_a_higher_layer_ray_or_mlflow_below_tracking_or_the_cli() -> None:
    found = [
        line
        for path in sorted(PACKAGE.glob("*.py"))
        if path.stem != "__init__"
        for line in violations(path.stem, path.read_text(encoding="utf-8"))
    ]
    assert found == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("engine", "import ray\n", "engine.py:1 imports ray in layer train"),
        ("models", "def f():\n    import mlflow.pyfunc\n", "models.py:2 imports mlflow"),
        (
            "tracking",
            "from unet_search.search import run_search\n",
            "tracking.py:1 imports search (driver), a layer above its own (tracking)",
        ),
        ("data", "from unet_search import plan\n", "imports plan (train), a layer above"),
        ("report", "from unet_search.cli import main\n", "report.py:1 imports cli"),
    ],
)
def test_a_planted_violation_is_found(module: str, source: str, expected: str) -> None:
    assert any(expected in line for line in violations(module, source)), violations(module, source)
