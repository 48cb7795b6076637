"""memeval: pytest for memorization."""

from importlib.metadata import PackageNotFoundError, version

import pluggy

try:
    __version__ = version("memeval")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

hookimpl = pluggy.HookimplMarker("memeval")
"""Marker for hook implementations: `@memeval.hookimpl def memeval_register(registry): ...`."""


def __getattr__(name: str) -> object:
    """`from memeval import Method` works as `from memeval.api import Method` (the public surface),
    imported on first use, so `import memeval` stays light (the pytest plugin loads no torch)."""
    import importlib
    import importlib.util

    if importlib.util.find_spec(f"memeval.{name}") is not None:  # a submodule: `from memeval import suite`
        return importlib.import_module(f"memeval.{name}")
    api = importlib.import_module("memeval.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'memeval' has no attribute {name!r}")
