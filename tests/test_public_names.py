"""Each module's ``__all__`` says what it offers: every name in it exists, and every public
function and class the module defines is in it (one that only its module uses starts with
``_``). Modules of constants and the packages' ``__init__`` need none."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import pytest

import unet_search

# pyfunc_model registers itself with MLflow when imported; a __main__ runs the CLI.
SKIPPED = ("unet_search.serve.pyfunc_model",)


def _modules() -> list[str]:
    found = pkgutil.walk_packages(unet_search.__path__, "unet_search.")
    return sorted(
        m.name for m in found if m.name not in SKIPPED and not m.name.endswith(".__main__")
    )


def stale_names(module: types.ModuleType) -> list[str]:
    """What is wrong with ``module.__all__``: names it lists that do not exist, public
    functions and classes defined there that it does not list."""
    defined = [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == module.__name__
    ]
    listed = getattr(module, "__all__", None)
    if listed is None:
        return [f"no __all__, but it defines {defined}"] if defined else []
    missing = [f"{name} is listed but not there" for name in listed if not hasattr(module, name)]
    return missing + [f"{name} is not listed" for name in defined if name not in listed]


@pytest.mark.parametrize("name", _modules())
def test_all_lists_what_the_module_defines(name: str) -> None:
    assert stale_names(importlib.import_module(name)) == []


def test_a_stale_all_is_caught() -> None:
    planted = types.ModuleType("planted")
    exec("def shown(): pass\ndef hidden(): pass\n__all__ = ['shown', 'gone']", vars(planted))
    assert stale_names(planted) == ["gone is listed but not there", "hidden is not listed"]
    del planted.__all__
    assert stale_names(planted) == ["no __all__, but it defines ['shown', 'hidden']"]
