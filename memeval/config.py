"""Process-wide configuration: parsed options, the plugin manager and the registry."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pluggy

from memeval.cache import default_cache_dir
from memeval.registry import Registry


@dataclass
class Config:
    options: argparse.Namespace
    pluginmanager: pluggy.PluginManager
    registry: Registry

    @property
    def hook(self) -> pluggy.HookRelay:
        return self.pluginmanager.hook

    @property
    def verbosity(self) -> int:
        return getattr(self.options, "verbose", 0) - getattr(self.options, "quiet", 0)

    @property
    def cache_dir(self) -> Path:
        chosen = getattr(self.options, "cache_dir", None)
        return Path(chosen) if chosen else default_cache_dir()

    @property
    def cache_mode(self) -> str:
        return getattr(self.options, "cache", "use")
