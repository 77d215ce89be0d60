"""Tests mirror the package: every module that defines a function or a class has a test file
of its own name (``unet_search/<layer>/<module>.py`` -> ``tests/<layer>/test_<module>.py``, or
``test_<module>_<more>.py`` where another layer's test has the basename: pytest imports test
files by basename), or is on the list below with the test file that covers it. The list only
shrinks: an entry whose module got its own test file, or whose covering file is gone, fails
here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "unet_search"

# module -> the test file that tests it (each through the module named, or the whole the
# module is one part of). Give a module its own file and its entry goes.
TESTED_ELSEWHERE = {
    "cli/checks": "tests/plan/test_planner.py",  # the plan's warnings as `plan` prints them
    "cli/jobs": "tests/cli/test_cluster.py",  # submit, status, logs, stop on a real cluster
    "cli/terminal": "tests/cli/test_cli.py",  # the live panel on a pseudo-terminal
    "core/env": "tests/core/test_config.py",
    "core/errors": "tests/core/test_config.py",
    "core/files": "tests/cli/test_predict.py",  # nothing written over, nothing half-written
    "core/schema": "tests/core/test_config.py",
    "core/sections": "tests/core/test_config.py",
    "distributed/checkpoint": "tests/search/test_faults.py",  # killed workers resume; no pickle
    "distributed/context": "tests/distributed/test_recipe.py",
    "distributed/faults": "tests/search/test_faults.py",
    "distributed/reporter": "tests/distributed/test_recipe.py",  # metrics, samples, the model
    "distributed/trainer": "tests/distributed/test_recipe.py",  # `train` through TorchTrainer
    "finish/registration": "tests/finish/test_run.py",
    "finish/scoring": "tests/finish/test_run.py",
    "finish/summary": "tests/finish/test_run.py",
    "models/blocks": "tests/models/test_variants.py",
    "models/build": "tests/models/test_models.py",
    "models/smp": "tests/models/test_models.py",
    "models/unet": "tests/models/test_models.py",
    "models/unet3plus": "tests/models/test_variants.py",
    "plan/profile": "tests/plan/test_planner.py",
    "report/data": "tests/report/test_report.py",
    "report/page": "tests/report/test_report.py",
    "search/callbacks": "tests/search/test_faults.py",  # a failed trial's run, tags, error
    "search/context": "tests/finish/test_run.py",
    "search/driver": "tests/finish/test_run.py",
    "search/panel": "tests/search/test_live.py",
    "search/setup": "tests/finish/test_run.py",
    "search/state": "tests/search/test_asha.py",  # saved before a trial starts; resume
    "search/trial": "tests/finish/test_run.py",
    "serve/objects": "tests/cli/test_predict.py",
    "serve/packaging": "tests/serve/test_pyfunc_model.py",
    "tracking/client": "tests/tracking/test_tracking.py",
    "tracking/models": "tests/serve/test_pyfunc_model.py",
    "tracking/read": "tests/tracking/test_outage.py",
    "train/visualize": "tests/train/test_transforms.py",
}


def _modules_with_logic() -> list[str]:
    """``<layer>/<module>`` of every module that defines a function or a class."""
    found = []
    for path in sorted(PACKAGE.glob("*/*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        if path.stem != "__init__" and any(isinstance(n, kinds) for n in tree.body):
            found.append(f"{path.parent.name}/{path.stem}")
    return found


def _own(module: str) -> bool:
    """Whether ``module`` has a test file of its own."""
    layer, name = module.split("/")
    folder = ROOT / "tests" / layer
    return (folder / f"test_{name}.py").exists() or any(folder.glob(f"test_{name}_*.py"))


def test_every_module_with_logic_has_its_test_file_or_says_which_covers_it() -> None:
    modules = _modules_with_logic()
    assert len(modules) > 70  # the walk finds the package
    missing = [m for m in modules if not _own(m) and m not in TESTED_ELSEWHERE]
    assert missing == [], "give each its tests/<layer>/test_<module>.py"
    assert _own("core/metrics") and _own("train/metrics")  # test_metrics_table.py, test_metrics.py


def test_the_list_of_modules_tested_elsewhere_only_shrinks() -> None:
    modules = set(_modules_with_logic())
    stale = [m for m in TESTED_ELSEWHERE if m not in modules or _own(m)]
    assert stale == [], "remove these entries: gone, or tested in a file of their own"
    gone = [f for f in TESTED_ELSEWHERE.values() if not (ROOT / f).exists()]
    assert gone == []
