from __future__ import annotations

from pathlib import Path

import pytest

from unet_search.core.config import (
    LEAF_SECTION,
    PRESETS,
    SECTIONS,
    RunConfig,
    check_override,
    load_run_config,
    load_yaml,
    parse_override,
    run_leaves,
)
from unet_search.core.errors import ConfigError


def test_leaf_names_are_unique_across_sections() -> None:
    total = sum(len(klass.model_fields) for klass in SECTIONS.values())
    assert len(LEAF_SECTION) == total


def test_defaults_round_trip_through_dict() -> None:
    cfg = RunConfig()
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert RunConfig.from_dict(cfg.flat()) == cfg
    assert cfg.flat()["encoder"] == "none"


def test_flat_and_nested_keys_mix() -> None:
    cfg = RunConfig.from_dict({"model": {"depth": 3}, "epochs": 5, "lr": 1})
    assert (cfg.model.depth, cfg.train.epochs, cfg.optim.lr) == (3, 5, 1.0)
    assert isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"epoch": 3}, "unknown key `epoch`"),
        ({"model": {"depht": 3}}, "unknown key `model.depht`"),
        ({"depth": "3"}, "`model.depth` must be int, but got '3'"),
        ({"batchnorm": 1}, "`model.batchnorm` must be bool"),
        ({"depth": 9}, "`model.depth` must be in [2, 5], but got 9"),
        ({"val_fraction": 1.0}, "`data.val_fraction` must be in (0, 1)"),
        (
            {"val_fraction": 0.5, "test_fraction": 0.5},
            "`data.test_fraction` must be in [0, 1) and leave training images beside "
            "val_fraction 0.5, but got 0.5",
        ),
        ({"test_fraction": "some"}, "`data.test_fraction` must be float or null"),
        ({"padding": "full"}, "`model.padding` must be one of ['same', 'valid']"),
        ({"lr": float("nan")}, "`optim.lr` must be float"),
        ({"model": 3}, "`model` must be a mapping"),
        ({"preset": "nope"}, "preset` must be one of"),
    ],
)
def test_invalid_values_name_the_key_and_rule(raw: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(raw)
    assert fragment in str(err.value)


def test_preset_then_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("preset: seed_keras\ntrain:\n  epochs: 7\n  batch_size: 4\n")
    cfg = load_run_config(path, ["batch_size=2", "model.dropout=0.0"], num_workers=2)
    assert cfg.model.dropout_schedule == "ramp"  # from the preset
    assert cfg.train.epochs == 7  # file beats preset
    assert cfg.train.batch_size == 2  # --set beats file
    assert cfg.model.dropout == 0.0
    assert cfg.train.num_workers == 2
    assert cfg.loss.loss == PRESETS["seed_keras"]["loss"] == "bce"


def test_parse_override_types() -> None:
    assert parse_override("epochs=2") == ("epochs", 2)
    assert parse_override("train.threshold=0.4") == ("threshold", 0.4)
    assert parse_override("encoder_weights=null") == ("encoder_weights", None)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("epochs")
    with pytest.raises(ConfigError, match="unknown section `trian`"):
        parse_override("trian.epochs=2")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3e-3", 3e-3),
        ("1e-3", 1e-3),
        ("5E-4", 5e-4),
        ("-2e+2", -200.0),
        (".5", 0.5),
        ("-.25", -0.25),
        ("1.0e-4", 1e-4),
        ("1e3", 1000.0),
        ("7", 7),
        ("1_000", 1000),
        ("e5", "e5"),
        ("1e", "1e"),
        ("3e-3x", "3e-3x"),
        ("[1e-4, 1e-2]", [1e-4, 1e-2]),
    ],
)
def test_numbers_read_as_people_write_them(text: str, value: object) -> None:
    """YAML 1.2's floats: PyYAML (YAML 1.1) reads an exponent without a dot as a string."""
    loaded = load_yaml(text)
    assert loaded == value and type(loaded) is type(value)


def test_a_set_is_the_users_word_and_its_errors_name_it(tmp_path: Path) -> None:
    assert parse_override("lr=3e-3") == ("lr", 3e-3)
    assert load_run_config(None, ["lr=3e-3", "weight_decay=.5"]).optim.lr == 3e-3
    file = tmp_path / "run.yaml"
    file.write_text("optim:\n  lr: 1e-4\n")  # the same numbers in a file
    assert load_run_config(file).optim.lr == 1e-4
    cases = {
        "epohcs=1": "--set epohcs=1: unknown key `epohcs`; did you mean `epochs`?",
        "train.epohcs=1": "--set train.epohcs=1: unknown key `train.epohcs`; did you mean "
        "`epochs`?",
        "trian.epochs=1": "--set trian.epochs=1: unknown section `trian`; did you mean `train`?",
        "lr=abc": "--set lr=abc: `optim.lr` must be float, but got 'abc'.",
        "depth=9": "--set depth=9: `model.depth` must be in [2, 5], but got 9.",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError) as err:
            check_override(text)
        assert str(err.value) == message
        with pytest.raises(ConfigError) as err:  # beside a file, still the --set's fault
            run_leaves(file, [text])
        assert str(err.value) == message
    assert "valid keys are" not in cases["epohcs=1"]


def test_bad_yaml_reports_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 2\n  batch_size: [1, 2\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(path)
    assert str(path) in str(err.value)
    assert "line 4" in str(err.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file does not exist"):
        load_run_config(tmp_path / "nope.yaml")


def test_the_work_dir_of_a_ray_job_is_never_the_jobs_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's current directory is a package directory Ray may delete: there the work dir
    follows the storage folder, else the home folder; outside a job it is ./unet-search-runs."""
    from unet_search.core.env import work_dir
    from unet_search.core.errors import UserError

    monkeypatch.chdir(tmp_path)
    for key in ("UNET_SEARCH_HOME", "UNET_SEARCH_STORAGE", "RAY_JOB_CONFIG_JSON_ENV_VAR"):
        monkeypatch.delenv(key, raising=False)
    storage = tmp_path / "shared" / "storage"
    assert work_dir() == tmp_path / "unet-search-runs"
    assert work_dir(str(storage)) == tmp_path / "unet-search-runs"  # not in a job: as ever

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {}}')
    assert work_dir() == Path.home() / "unet-search-runs"
    assert work_dir(str(storage)) == storage / "unet-search-runs"  # --storage
    assert work_dir("s3://bucket/runs") == Path.home() / "unet-search-runs"
    monkeypatch.setenv("UNET_SEARCH_STORAGE", str(storage))
    assert work_dir() == storage / "unet-search-runs"
    assert work_dir("gs://bucket/runs") == Path.home() / "unet-search-runs"  # --storage wins
    monkeypatch.setenv("UNET_SEARCH_HOME", str(tmp_path / "home"))
    assert work_dir() == tmp_path / "home"  # the user's choice wins
    monkeypatch.setenv("UNET_SEARCH_HOME", "rel/home")
    with pytest.raises(UserError, match=r"UNET_SEARCH_HOME 'rel/home': must be an absolute"):
        work_dir()
    monkeypatch.delenv("UNET_SEARCH_HOME")
    with pytest.raises(UserError, match=r"--storage / UNET_SEARCH_STORAGE 'runs': must be an"):
        work_dir("runs")
    assert not (tmp_path / "unet-search-runs").exists()  # nothing written


def test_keeping_the_dsb_epoch_needs_the_dsb_score_every_epoch() -> None:
    for leaves, shown in (
        ({"dsb_every": 0}, "dsb_every is 0, num_classes 1"),
        ({"dsb_every": 3}, "dsb_every is 3, num_classes 1"),
        ({"num_classes": 3}, "dsb_every is 1, num_classes 3"),
    ):
        with pytest.raises(ConfigError, match=shown):
            RunConfig.from_dict({"early_stop_metric": "val_dsb_score", **leaves})
    cfg = RunConfig.from_dict({"early_stop_metric": "val_dsb_score", "num_classes": 2})
    assert cfg.train.dsb_every == 1


def test_sections_are_frozen_strict_pydantic_models_that_speak_our_errors() -> None:
    """A section built directly checks like one read from YAML; frozen; unknown keys refused."""
    from pydantic import ValidationError

    from unet_search.core.sections import DataConfig, ModelConfig

    with pytest.raises(ConfigError, match=r"^`model.depth` must be in \[2, 5\], but got 9\.$"):
        ModelConfig(depth=9)
    with pytest.raises(ConfigError, match=r"`model.dept` is not a valid key here"):
        ModelConfig(dept=3)  # type: ignore[call-arg]
    with pytest.raises(
        ConfigError, match=r"`data.patch_size` must be one int or \[height, width\]"
    ):
        DataConfig(patch_size=[64, 64, 3])  # type: ignore[arg-type]
    cfg = RunConfig.from_dict({"patch_size": 64, "lr": 1})
    assert cfg.data.patch_size == (64, 64) and cfg.optim.lr == 1.0
    with pytest.raises(ValidationError, match="frozen"):
        cfg.model.depth = 3  # type: ignore[misc]
    assert cfg.data.with_values(val_fraction=0.3).val_fraction == 0.3
    with pytest.raises(ConfigError, match=r"`data\.val_fraction` must be in"):
        cfg.data.with_values(val_fraction=3)
    assert hash(cfg) == hash(RunConfig.from_dict(cfg.to_dict())) and {cfg: 1}[cfg] == 1
