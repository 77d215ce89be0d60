"""MkDocs hook: the configuration page's reference, generated from the config schema when the
site is built (unet_search.space.reference), so it cannot go stale."""

from __future__ import annotations

from typing import Any

MARKER = "<!-- config-keys -->"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from unet_search.space.reference import config_reference

    return markdown.replace(MARKER, config_reference())
