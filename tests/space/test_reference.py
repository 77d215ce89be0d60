"""The configuration reference generated from the schema: each key with its type, default,
rule and the source's comment; every section and field is there."""

from __future__ import annotations

from typing import Annotated

from unet_search.core.schema import Frozen, between, choice
from unet_search.space.reference import SECTIONS, config_reference, field_comments


class _Example(Frozen):
    """An example section."""

    section = "example"
    # said above the field,
    # on two lines
    size: Annotated[int, between(1, 9)] = 3
    kind: Annotated[str, choice(["a", "b"])] = "a"  # said beside it
    plain: bool = False


def test_comments_above_and_beside_a_field_are_its_notes() -> None:
    assert field_comments(_Example) == {
        "size": "said above the field, on two lines",
        "kind": "said beside it",
        "plain": "",
    }


def test_every_key_is_listed_with_its_type_default_and_rule() -> None:
    text = config_reference()
    for cls in SECTIONS:
        assert f"### `{cls.section}`" in text
        for name in cls.model_fields:
            assert f"| `{name}` |" in text, f"{cls.section}.{name}"
    assert "| `scale` | number | `1.0` | must be in [0.05, 4] |" in text
    assert (
        "| `image_size` | integer or null | `null` | must be in [16, 4096] | resize mode" in text
    )
    assert "| `type` | text | `asha` | must be one of ['asha', 'asha_stopping', 'fifo'] |" in text
    assert "| `metric` | text | (required) |" in text  # a constraint's
