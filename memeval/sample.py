"""One example of a dataset, as every method receives it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    """One example. Text datasets fill `text` (or `prefix`/`suffix`); token datasets fill `tokens`."""

    id: str
    text: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    tokens: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def full_text(self) -> str | None:
        if self.text is not None:
            return self.text
        if self.prefix is not None:
            return self.prefix + (self.suffix or "")
        return None
