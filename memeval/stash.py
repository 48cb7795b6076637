"""A typed store for plugin state that lives as long as its owner (pytest's `Stash`)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")


class StashKey(Generic[T]):
    """A key of a `Stash`; its type parameter is the type of the value stored under it."""

    __slots__ = ()


class Stash:
    """`stash[key] = value`, `stash[key]`, `stash.get(key, default)`, `key in stash`: plugins keep
    their state here instead of in attributes of the objects they are handed."""

    __slots__ = ("_store",)

    def __init__(self) -> None:
        self._store: dict[StashKey[Any], object] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._store[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        return cast(T, self._store[key])

    def get(self, key: StashKey[T], default: T) -> T:
        return cast(T, self._store.get(key, default))

    def setdefault(self, key: StashKey[T], default: T) -> T:
        return cast(T, self._store.setdefault(key, default))

    def __contains__(self, key: StashKey[T]) -> bool:
        return key in self._store
