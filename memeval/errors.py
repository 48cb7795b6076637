"""Errors that end a run with a usage exit code, and the "did you mean" helper."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes, as pytest's."""

    OK = 0
    GATES_FAILED = 1
    INTERRUPTED = 2
    INTERNAL_ERROR = 3
    USAGE_ERROR = 4
    NO_EVALUATIONS = 5


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), sorted(set(choices)), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def format_path(path: Iterable[str | int]) -> str:
    """('evaluations', 0, 'params') -> 'evaluations[0].params'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class UsageError(Exception):
    """Bad input from the user: a suite, a data file, a command-line option. Exit code 4."""

    message: str
    file: str | None = None
    line: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"


class CacheMiss(UsageError):
    """`--cache only` asked for an output the cache does not hold."""


class RegistryError(Exception):
    """A plugin registered something twice or malformed: a plugin bug, not a user error (exit 3)."""
