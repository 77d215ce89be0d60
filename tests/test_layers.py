"""The package's layers, checked by reading every module's imports (issue 16's contract).

Each subpackage is a layer; lowest first, a module imports only its own layer and lower ones:

    core         typed config, errors, the metrics table, tag names, the work dir
    data         scan, decode, cache + fingerprint, split, synthetic data
    models       the architectures and the one way to build, save and load them
    plan         the data's profile and the planner (nnU-Net's fingerprint -> plan; above
                 models, as STYLE.md rule 1 puts it: it may count the models it plans)
    train        transforms, losses, metrics, engine, sliding-window prediction
    tracking     MLflow: client writes, outage handling, read models, registry
    distributed  the worker recipe (in a trial or a Ray Train worker), the TorchTrainer
    space        the search space: spec, validation, loading and planning
    search       Tune + Optuna: searcher, schedulers, trial, callbacks, state, the driver
                 that sets a search up and explores it, the final fit
    serve        load_model / Predictor, the pyfunc, what a registered model is
    report       the HTML report (it reads the space and the runs)
    finish       a whole search, start to end: test scoring, summary, registration, report
    cli          the command line and cluster jobs
    napari_plugin  the napari plugin's widget (beside cli: both are ways in, neither imports
                 the other)

MLflow is called only from `tracking`; the one exception is `serve`'s pyfunc module, whose
`PythonModel` MLflow loads (serve/pyfunc_model.py).

`data`, `plan`, `models` and `train` (and `core`) import neither Ray nor MLflow: arrays from the
object store are handed to them by the worker. Nothing imports `cli` or `napari_plugin`. The
package's ``__init__`` only sets process defaults and re-exports ``load_model`` (lazily), and
``unet_search/inference.py`` only re-exports :mod:`unet_search.serve.inference` for models
registered before the subpackages: neither is a layer, and both are checked to stay thin."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "unet_search"
LAYERS = (
    "core",
    "data",
    "models",
    "plan",
    "train",
    "tracking",
    "distributed",
    "space",
    "search",
    "serve",
    "report",
    "finish",
    "cli",
    "napari_plugin",
)
MLFLOW_OUTSIDE_TRACKING = {"unet_search/serve/pyfunc_model.py"}
LEVEL = {layer: level for level, layer in enumerate(LAYERS)}
NO_RAY_OR_MLFLOW_UP_TO = LEVEL["train"]
SHIMS = {"__init__": {"unet_search.serve.inference"}, "inference": {"unet_search.serve.inference"}}


def _imports(source: str) -> list[tuple[str, int]]:
    """(what, line) of every import in ``source``: ``unet_search.<layer>...`` as the layer,
    others as their top-level package; imports inside functions count too."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "unet_search" and len(parts) == 1:
                found += [(alias.name, node.lineno) for alias in node.names]
            elif parts[0] == "unet_search":
                found.append((parts[1], node.lineno))
            else:
                found.append((parts[0], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                found.append((parts[1] if parts[0] == "unet_search" else parts[0], node.lineno))
    return found


def violations(where: str, layer: str, source: str) -> list[str]:
    """What in the module ``where`` (in ``layer``) breaks the contract, one line each."""
    out = []
    level = LEVEL[layer]
    for name, line in _imports(source):
        if name == "cli" and layer != "cli":
            out.append(f"{where}:{line} imports cli")
        elif name in LEVEL and LEVEL[name] > level:
            out.append(f"{where}:{line} imports {name}, a layer above its own ({layer})")
        if name in ("ray", "mlflow") and level <= NO_RAY_OR_MLFLOW_UP_TO:
            out.append(f"{where}:{line} imports {name} in layer {layer}")
        elif name == "mlflow" and layer != "tracking" and where not in MLFLOW_OUTSIDE_TRACKING:
            out.append(f"{where}:{line} imports mlflow outside tracking")
    return out


def _modules() -> list[tuple[str, str, Path]]:
    """(where, layer, path) of every module in a subpackage."""
    return [
        (str(path.relative_to(PACKAGE.parent)), path.parent.name, path)
        for path in sorted(PACKAGE.glob("*/*.py"))
    ]


def test_every_module_is_in_a_layer_and_the_top_level_holds_only_shims() -> None:
    assert {path.parent.name for _, _, path in _modules()} == set(LAYERS)
    assert {p.stem for p in PACKAGE.glob("*.py")} == set(SHIMS)
    assert not list(PACKAGE.glob("*/*/*.py")), "one level of subpackages"


def test_no_module_imports_a_higher_layer_ray_or_mlflow_below_tracking_or_the_cli() -> None:
    found = [
        line
        for where, layer, path in _modules()
        for line in violations(where, layer, path.read_text(encoding="utf-8"))
    ]
    assert found == []


@pytest.mark.parametrize("stem", sorted(SHIMS))
def test_the_top_level_modules_only_re_export(stem: str) -> None:
    tree = ast.parse((PACKAGE / f"{stem}.py").read_text(encoding="utf-8"))
    ours = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("unet_search")
    }
    assert ours == SHIMS[stem]
    classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    functions = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]
    assert not classes and all(len(f.body) <= 3 for f in functions)


@pytest.mark.parametrize(
    ("layer", "source", "expected"),
    [
        ("train", "import ray\n", "train/x.py:1 imports ray in layer train"),
        ("models", "def f():\n    import mlflow.pyfunc\n", "models/x.py:2 imports mlflow"),
        (
            "tracking",
            "from unet_search.finish.run import run_search\n",
            "tracking/x.py:1 imports finish, a layer above its own (tracking)",
        ),
        ("data", "from unet_search.train import plan\n", "imports train, a layer above"),
        ("data", "import unet_search.models.build\n", "imports models, a layer above"),
        ("report", "from unet_search.cli import main\n", "report/x.py:1 imports cli"),
        ("search", "from unet_search import cli\n", "search/x.py:1 imports cli"),
        (
            "search",
            "from unet_search.report.page import write_report\n",
            "search/x.py:1 imports report, a layer above its own (search)",
        ),
        (
            "search",
            "def f():\n    from unet_search.serve import packaging\n",
            "search/x.py:2 imports serve, a layer above its own (search)",
        ),
        ("serve", "from mlflow.tracking import MlflowClient\n", "imports mlflow outside tracking"),
        ("finish", "import mlflow\n", "finish/x.py:1 imports mlflow outside tracking"),
    ],
)
def test_a_planted_violation_is_found(layer: str, source: str, expected: str) -> None:
    found = violations(f"{layer}/x.py", layer, source)
    assert any(expected in line for line in found), found


def test_the_real_tree_with_one_planted_import_fails() -> None:
    """The contract check on today's engine with a Ray import added at its top."""
    engine = (PACKAGE / "train" / "engine.py").read_text(encoding="utf-8")
    assert violations("train/engine.py", "train", engine) == []
    planted = "from unet_search.search.trial import trial_main\n" + engine
    assert violations("train/engine.py", "train", planted) == [
        "train/engine.py:1 imports search, a layer above its own (train)"
    ]


def test_no_module_is_over_500_lines() -> None:
    """A module a newcomer can read in one sitting (issue 25): split by what it does."""
    long = {
        where: n
        for where, _, path in _modules()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 500
    }
    assert long == {}
