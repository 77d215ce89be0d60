"""The command line's entry point stays light: the parser, ``--help`` and every error about
the arguments come before anything heavy is imported (each command imports what it needs)."""

from __future__ import annotations

from conftest import fresh_python


def test_importing_the_cli_imports_no_numpy_torch_ray_or_mlflow() -> None:
    code = (
        "import json, sys\n"
        "import unet_search.cli\n"
        "from unet_search.cli.app import main\n"
        "heavy = {'numpy', 'torch', 'ray', 'mlflow', 'optuna', 'PIL'}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & heavy)))\n"
    )
    assert fresh_python(code, timeout=60) == []
