"""The ``unet-search`` command line: ``app`` (the parser and ``main``), ``commands`` (one
function a subcommand), ``jobs`` (searches submitted to a Ray cluster's job server)."""

from unet_search.cli.app import main

__all__ = ["main"]
