"""memeval: pytest for memorization."""

from importlib.metadata import PackageNotFoundError, version

import pluggy

try:
    __version__ = version("memeval")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

hookimpl = pluggy.HookimplMarker("memeval")
"""Marker for hook implementations: `@memeval.hookimpl def memeval_register(registry): ...`."""
