"""The plugin manager: builtins, the `memeval` entry-point group, `-p NAME` and `-p no:NAME`."""

from __future__ import annotations

import importlib

import pluggy

from memeval import hookspec
from memeval.errors import UsageError
from memeval.registry import Registry

ENTRY_POINT_GROUP = "memeval"
# name -> module; each can be blocked with `-p no:NAME` like pytest's builtin plugins.
BUILTIN_PLUGINS = {
    "adapters": "memeval.models",
    "loaders": "memeval.data",
    "local": "memeval.runner",
    "ray": "memeval.ray_executor",
    "sharing": "memeval.sharing",
    "terminal": "memeval.report.terminal",
    "reports": "memeval.report.base",
    "json": "memeval.report.json",
    "html": "memeval.report.html",
    "markdown": "memeval.report.markdown",
    "junit": "memeval.report.junit",
}


def make_plugin_manager(plugin_args: list[str] | None = None) -> pluggy.PluginManager:
    """Register builtins, entry points and `-p` plugins; fail loudly on unknown hooks."""
    pm = pluggy.PluginManager("memeval")
    pm.add_hookspecs(hookspec)
    plugin_args = plugin_args or []
    for arg in plugin_args:
        if arg.startswith("no:"):
            pm.set_blocked(arg[3:])
    for name, module in BUILTIN_PLUGINS.items():
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(module), name=name)
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except Exception as exc:  # a broken third-party plugin must not look like a memeval bug
        raise UsageError(f"cannot load a plugin from the {ENTRY_POINT_GROUP!r} entry points: {exc!r}") from exc
    for arg in plugin_args:
        if not arg.startswith("no:") and pm.get_plugin(arg) is None and not pm.is_blocked(arg):
            try:
                pm.register(importlib.import_module(arg), name=arg)
            except ImportError as exc:
                raise UsageError(f"-p {arg}: cannot import plugin module: {exc}") from None
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise UsageError(f"plugin {exc.plugin!r} implements a hook memeval does not have: {exc}") from None
    return pm


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Ask every plugin to register what it provides, remembering who provided what."""
    registry = Registry()
    for impl in reversed(pm.hook.memeval_register.get_hookimpls()):
        registry.current_plugin = impl.plugin_name
        impl.function(registry=registry)
    registry.current_plugin = "?"
    return registry


def distributions(pm: pluggy.PluginManager) -> dict[str, str]:
    """Plugin name -> 'distribution version' for plugins that came from entry points."""
    out: dict[str, str] = {}
    for plugin, dist in pm.list_plugin_distinfo():
        name = pm.get_name(plugin)
        if name is not None:
            out[name] = f"{dist.project_name} {dist.version}"
    return out
