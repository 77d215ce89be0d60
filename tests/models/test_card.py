"""A saved model's card: JSON in and out, versioned; a card this version cannot read says so
and names its file (no torch model built)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unet_search.core.errors import ConfigError, UserError
from unet_search.core.names import CONFIG_FILE
from unet_search.core.sections import ModelConfig
from unet_search.models.card import FORMAT_VERSION, ModelCard


def test_a_card_round_trips_and_never_saves_the_encoder_weights_name(tmp_path: Path) -> None:
    model = ModelConfig(encoder="resnet18", encoder_weights="imagenet", depth=3)
    card = ModelCard(model, 3, {"normalization": "zscore", "mean": [0.5]})
    card.write(tmp_path)
    raw = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert raw["format_version"] == FORMAT_VERSION and raw["model"]["encoder_weights"] is None
    back = ModelCard.read(tmp_path)
    assert back.model == model.model_copy(update={"encoder_weights": None})
    assert (back.num_classes, dict(back.preprocessing)) == (
        3,
        {"normalization": "zscore", "mean": [0.5]},
    )


def test_an_older_card_reads_a_newer_or_broken_one_is_refused_naming_its_file(
    tmp_path: Path,
) -> None:
    raw = ModelCard(ModelConfig(depth=2), 1).to_dict()
    del raw["format_version"]  # before cards were versioned
    assert ModelCard.from_dict(raw).format_version == 1
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**raw, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(UserError, match=rf"{CONFIG_FILE}: a model card of format 2, newer"):
        ModelCard.read(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"model": {"depth": 2}}))
    with pytest.raises(UserError, match="not a model card unet-search wrote"):
        ModelCard.read(tmp_path)
    raw["model"]["depth"] = 99  # a card, but a build config no version allows: its own rule
    with pytest.raises(ConfigError, match=r"`model.depth` must be in \[2, 5\], but got 99"):
        ModelCard.from_dict(raw)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(UserError, match="not a readable model card"):
        ModelCard.read(tmp_path)
