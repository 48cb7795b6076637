"""Label noise hits the requested rate and pattern exactly, and is deterministic under the seed."""

from __future__ import annotations

import numpy as np
import pytest

from memeval.errors import UsageError
from memeval.train.noise import DIGIT_FLIPS, apply_noise, asymmetric_noise, symmetric_noise


def labels(n: int = 1000, classes: int = 10, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.2, 0.37, 0.4, 0.8, 1.0])
@pytest.mark.parametrize("n", [1000, 1347, 7])
def test_symmetric_flips_exactly_the_rate_to_other_classes(rate, n):
    clean = labels(n)
    noisy = symmetric_noise(clean, rate, 10, seed=3)
    assert noisy.flipped == round(rate * n)
    assert np.array_equal(noisy.mask, noisy.labels != clean)
    assert np.all(noisy.labels[noisy.mask] != clean[noisy.mask])
    assert np.array_equal(noisy.labels[~noisy.mask], clean[~noisy.mask])
    assert noisy.labels.min() >= 0 and noisy.labels.max() < 10


def test_symmetric_targets_are_uniform_over_the_other_classes():
    clean = np.zeros(60000, dtype=np.int64)
    noisy = symmetric_noise(clean, 0.5, 10, seed=0)
    counts = np.bincount(noisy.labels[noisy.mask], minlength=10)
    assert counts[0] == 0
    expected = noisy.flipped / 9
    assert np.all(np.abs(counts[1:] - expected) < 5 * np.sqrt(expected))  # chi-square-sized tolerance


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.4, 0.5, 1.0])
def test_asymmetric_flips_exactly_the_rate_of_each_source_class_along_its_pair(rate):
    clean = labels(2000)
    noisy = asymmetric_noise(clean, rate, 10, seed=1)
    for source in range(10):
        members = clean == source
        flipped = noisy.mask & members
        if source in DIGIT_FLIPS:
            assert flipped.sum() == round(rate * members.sum())
            assert np.all(noisy.labels[flipped] == DIGIT_FLIPS[source])
        else:
            assert flipped.sum() == 0
    assert noisy.flipped == sum(round(rate * (clean == s).sum()) for s in DIGIT_FLIPS)


def test_asymmetric_swap_and_custom_pairs():
    clean = np.repeat(np.arange(4), 100)
    noisy = asymmetric_noise(clean, 0.3, 4, seed=2, pairs={0: 1, 1: 0, 3: 2})
    assert (noisy.labels[clean == 0] == 1).sum() == 30 and (noisy.labels[clean == 1] == 0).sum() == 30
    assert (noisy.labels[clean == 3] == 2).sum() == 30 and not noisy.mask[clean == 2].any()


def test_noise_is_deterministic_under_the_seed_and_differs_across_seeds():
    clean = labels()
    for kind in ("symmetric", "asymmetric"):
        a = apply_noise(clean, kind, 0.4, 10, seed=7)
        b = apply_noise(clean, kind, 0.4, 10, seed=7)
        c = apply_noise(clean, kind, 0.4, 10, seed=8)
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.mask, b.mask)
        assert not np.array_equal(a.labels, c.labels)


def test_no_noise_keeps_the_labels():
    clean = labels()
    for kind, rate in (("none", 0.5), ("symmetric", 0.0)):
        noisy = apply_noise(clean, kind, rate, 10, seed=0)
        assert noisy.flipped == 0 and np.array_equal(noisy.labels, clean)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: symmetric_noise(labels(), 1.5, 10, 0), "rate must be in"),
    (lambda: symmetric_noise(labels(), 0.2, 5, 0), "must lie in"),
    (lambda: asymmetric_noise(labels(), 0.2, 10, 0, pairs={3: 3}), "to itself"),
    (lambda: asymmetric_noise(labels(), 0.2, 10, 0, pairs={3: 12}), "outside"),
    (lambda: apply_noise(labels(), "pairflip", 0.2, 10, 0), "unknown noise kind"),
    (lambda: symmetric_noise(np.array([0.5, 1.0]), 0.2, 10, 0), "integer"),
])
def test_bad_noise_input_is_a_usage_error(call, message):
    with pytest.raises(UsageError, match=message):
        call()
