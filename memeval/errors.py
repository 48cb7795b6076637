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


# From least to most severe: several outcomes (suites, hooks) exit with the most severe one.
SEVERITY = [ExitCode.OK, ExitCode.NO_EVALUATIONS, ExitCode.GATES_FAILED, ExitCode.INTERNAL_ERROR,
            ExitCode.INTERRUPTED, ExitCode.USAGE_ERROR]


def most_severe(*codes: ExitCode) -> ExitCode:
    return max(codes, key=SEVERITY.index)


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


class EnvironmentProblem(UsageError):
    """The machine refused: a read-only or full disk, a corrupt cache, a path that is not a file.
    The message names the path and what to do. Exit code 4, like any usage error."""


class CacheMiss(UsageError):
    """`--cache only` asked for an output the cache does not hold."""


class RegistryError(Exception):
    """A plugin registered something twice or malformed: a plugin bug, not a user error (exit 3)."""


class Failures(Exception):
    """Several independent parts failed (reporters of one run): each (name, exception), all reported."""

    def __init__(self, failures: list[tuple[str, BaseException]]):
        self.failures = failures
        super().__init__("; ".join(f"{name}: {type(exc).__name__}: {exc}" for name, exc in failures))
