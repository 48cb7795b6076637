"""What the plugins provide, by name: methods, model adapters, dataset loaders, reporters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memeval.errors import RegistryError, did_you_mean
from memeval.method import check_method_class

KINDS = ("method", "adapter", "loader", "reporter", "trainer")


@dataclass
class Entry:
    kind: str
    name: str
    obj: Any
    plugin: str


class UnknownName(LookupError):
    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        hint = did_you_mean(name, known) or f" (known: {', '.join(sorted(known)) or 'none'})"
        super().__init__(f"unknown {kind} {name!r}{hint}")


@dataclass
class Registry:
    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    current_plugin: str = "?"

    def _add(self, kind: str, name: str, obj: Any) -> None:
        if not name:
            raise RegistryError(f"plugin {self.current_plugin!r} registered a {kind} without a name")
        table = self.entries[kind]
        if name in table:
            raise RegistryError(f"{kind} {name!r} registered by both {table[name].plugin!r} and "
                                f"{self.current_plugin!r}")
        table[name] = Entry(kind, name, obj, self.current_plugin)

    def add_method(self, cls: type) -> None:
        check_method_class(cls)
        self._add("method", cls.name, cls)

    def add_adapter(self, cls: type) -> None:
        self._add("adapter", cls.name, cls)

    def add_loader(self, name: str, fn: Callable[..., Any]) -> None:
        self._add("loader", name, fn)

    def add_reporter(self, name: str, cls: Any) -> None:
        self._add("reporter", name, cls)

    def add_trainer(self, name: str, trainer: Any) -> None:
        """A training method for training-experiment models (label noise, localization, ...)."""
        self._add("trainer", name, trainer)

    def get(self, kind: str, name: str) -> Any:
        table = self.entries[kind]
        if name not in table:
            raise UnknownName(kind, name, list(table))
        return table[name].obj

    def table(self, kind: str) -> dict[str, Any]:
        """Everything registered of one kind, by name."""
        return {name: entry.obj for name, entry in self.entries[kind].items()}

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def entry(self, kind: str, name: str) -> Entry:
        return self.entries[kind][name]
