"""Calling a hook so that one plugin's failure never hides another's."""

from __future__ import annotations

from typing import Any

import pluggy


def call_each(caller: pluggy.HookCaller, **kwargs: Any) -> list[tuple[str, Exception]]:
    """Call every implementation of a hook in pluggy's order, each on its own: one that raises is
    recorded (plugin name, exception) and the others still run. A hook with wrappers is called
    whole, since a wrapper needs the rest of the chain inside it."""
    impls = caller.get_hookimpls()
    if any(impl.hookwrapper or impl.wrapper for impl in impls):
        try:
            caller(**kwargs)
        except Exception as exc:
            return [("?", exc)]
        return []
    failures = []
    for impl in reversed(impls):
        try:
            impl.function(**{name: kwargs[name] for name in impl.argnames})
        except Exception as exc:  # noqa: PERF203 - each plugin on its own
            failures.append((impl.plugin_name, exc))
    return failures
