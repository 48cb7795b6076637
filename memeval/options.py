"""Command-line value types shared by `memeval` and its pytest plugin.

Imports nothing heavy: the pytest plugin loads this module in every pytest session.
"""

from __future__ import annotations

import argparse

CACHE_MODES = ("use", "refresh", "off", "only")


def model_override(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**32), got {text}")
    return value
