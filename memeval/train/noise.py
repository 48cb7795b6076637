"""Label noise at an exact rate, deterministic under a seed. Pure numpy.

Two kinds:

- `symmetric`: exactly `round(rate * n)` examples, drawn uniformly without replacement, get a label
  drawn uniformly from the *other* classes (never their own). So the share of wrong labels is
  exactly the requested rate (up to the rounding of one example). Some papers (DivideMix, the
  CrossSplit code) instead draw the new label from all classes, so that only `rate * (C-1)/C` of
  the labels end up wrong; this module does not.
- `asymmetric`: class-dependent flips along a pair map `source -> target` (default the standard
  digit flips 2->7, 3->8, 5<->6, 7->1). For every source class `s` of the map, exactly
  `round(rate * n_s)` of the `n_s` examples whose clean label is `s` get the label `map[s]`; classes
  not in the map keep all their labels. The overall share of wrong labels is therefore
  `sum_s round(rate * n_s) / n`, less than `rate` when some classes are not sources. Chains and
  swaps (5<->6, 7->1 with 2->7) are drawn from the clean labels, so no example is flipped twice.

The clean labels are kept by the caller for measurement; the trainer only ever sees `labels`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from memeval.errors import UsageError

DIGIT_FLIPS: dict[int, int] = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}
NOISE_STREAM = 0x6E6F697365  # "noise": keeps the noise draw independent of other uses of the seed


@dataclass(frozen=True)
class NoisyLabels:
    """`labels`: what the trainer sees; `mask`: True where `labels` differs from the clean label."""

    labels: np.ndarray
    mask: np.ndarray

    @property
    def flipped(self) -> int:
        return int(self.mask.sum())


def noise_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([NOISE_STREAM, int(seed)])


def symmetric_noise(labels: np.ndarray, rate: float, num_classes: int, seed: int) -> NoisyLabels:
    """Flip exactly round(rate * n) labels, each to a uniformly drawn other class."""
    clean = _check_labels(labels, num_classes)
    _check_rate(rate)
    if num_classes < 2 and rate > 0:
        raise UsageError("symmetric noise needs at least 2 classes")
    rng = noise_rng(seed)
    count = round(rate * len(clean))
    chosen = rng.choice(len(clean), size=count, replace=False)
    offsets = rng.integers(1, num_classes, size=count)  # 1..C-1: never the clean class
    noisy = clean.copy()
    noisy[chosen] = (clean[chosen] + offsets) % num_classes
    return NoisyLabels(noisy, noisy != clean)


def asymmetric_noise(labels: np.ndarray, rate: float, num_classes: int, seed: int,
                     pairs: Mapping[int, int] | None = None) -> NoisyLabels:
    """Flip exactly round(rate * n_s) examples of each source class s of `pairs` to pairs[s]."""
    clean = _check_labels(labels, num_classes)
    _check_rate(rate)
    flips = dict(DIGIT_FLIPS if pairs is None else pairs)
    _check_pairs(flips, num_classes)
    rng = noise_rng(seed)
    noisy = clean.copy()
    for source in sorted(flips):
        members = np.flatnonzero(clean == source)
        chosen = rng.choice(members, size=round(rate * len(members)), replace=False)
        noisy[chosen] = flips[source]
    return NoisyLabels(noisy, noisy != clean)


def apply_noise(labels: np.ndarray, kind: str, rate: float, num_classes: int, seed: int,
                pairs: Mapping[int, int] | None = None) -> NoisyLabels:
    """Dispatch on `kind`: 'none', 'symmetric' or 'asymmetric'."""
    if kind == "none" or rate == 0:
        clean = _check_labels(labels, num_classes)
        return NoisyLabels(clean.copy(), np.zeros(len(clean), dtype=bool))
    if kind == "symmetric":
        return symmetric_noise(labels, rate, num_classes, seed)
    if kind == "asymmetric":
        return asymmetric_noise(labels, rate, num_classes, seed, pairs)
    raise UsageError(f"unknown noise kind {kind!r}; expected 'none', 'symmetric' or 'asymmetric'")


def _check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    clean = np.asarray(labels)
    if clean.ndim != 1 or not np.issubdtype(clean.dtype, np.integer):
        raise UsageError(f"labels must be a 1-D integer array, got shape {clean.shape} dtype {clean.dtype}")
    if len(clean) and (clean.min() < 0 or clean.max() >= num_classes):
        raise UsageError(f"labels must lie in [0, {num_classes}), got [{clean.min()}, {clean.max()}]")
    return clean.astype(np.int64)


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise UsageError(f"noise rate must be in [0, 1], got {rate}")


def _check_pairs(pairs: Mapping[int, int], num_classes: int) -> None:
    for source, target in pairs.items():
        for name, value in (("source", source), ("target", target)):
            if not 0 <= int(value) < num_classes:
                raise UsageError(f"asymmetric noise pair {source}->{target}: {name} class {value} "
                                 f"is outside [0, {num_classes})")
        if source == target:
            raise UsageError(f"asymmetric noise pair {source}->{target} maps a class to itself")
