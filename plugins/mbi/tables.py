"""Memorization-based inference: lookup tables built from a trained RAM, and inference that only
compares keys and reads tables.

Build (over the training set, once): run the trained RAM and record, per glimpse, where it looked,
the patch it read and the hidden state after it.
- patch keys: a patch is coded with `levels` bits per pixel, a thermometer code (bit l of a pixel is
  set when the pixel exceeds (l + 1) / (levels + 1); levels = 1 binarises at 0.5), so that Hamming
  distance between codes is the L1 distance between the quantized patches; the codebook
  is `patch_clusters` codes, k-means centroids of the training codes thresholded at 0.5 (or all
  distinct training codes when there are fewer). A patch's key is its nearest code in Hamming
  distance (ties: the lower index), what a binary content-addressable memory returns.
- hidden states: per glimpse, k-means of the RAM's hidden vectors into `hidden_clusters` states.
- tables, per glimpse t: `locations[t][s]` = the pixel centre of glimpse t in state s (the most
  frequent one the RAM used from that state; glimpse 0 is at the image centre); `transitions[t][s, p]`
  = the next state (the most frequent hidden cluster the RAM reached after reading a patch with key p
  from state s), at the last glimpse the class (the most frequent class the RAM predicted). A key
  (s, p) never seen in training takes the value of the nearest seen patch code from the same state.
  The state s is the table's own (the state its lookups reached on that training example), so the
  next glimpse's tables are keyed by the states inference will actually be in.
So the key of a step is (hidden state, glimpse location, patch) with the location a function of the
state, and its value the next hidden state (its cluster) or, at the last step, the class.

Inference (per example, per glimpse): read the location of the current state (a table read; none at
glimpse 0), read the patch (`glimpse` row reads of at most 64 bits), compare its code with every
codebook key (`patch_clusters` key comparisons of `glimpse`^2 x `levels` bits: XOR and popcount, no multiply),
read the transition entry (a table read). Every comparison and read is counted as it is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from memeval.api import UsageError
from memeval_plugins.mbi.ram import RecurrentAttention, Trajectory, trajectory

FIT_LIMIT = 10_000  # k-means is fitted on at most this many vectors, then every vector is assigned


@dataclass
class OpCounts:
    """Operations of lookup inference, summed over the examples it ran on."""

    examples: int = 0
    key_comparisons: int = 0  # one query code against one stored key
    bits_compared: int = 0  # key comparisons x bits per key
    patch_reads: int = 0  # image rows read (one memory access each, <= 64 bits)
    location_reads: int = 0  # location-table entries read
    transition_reads: int = 0  # transition-table entries read

    @property
    def table_reads(self) -> int:
        return self.patch_reads + self.location_reads + self.transition_reads

    def per_inference(self) -> dict[str, float]:
        n = max(self.examples, 1)
        return {
            "key_comparisons": self.key_comparisons / n,
            "bits_compared": self.bits_compared / n,
            "table_reads": self.table_reads / n,
            "patch_reads": self.patch_reads / n,
            "location_reads": self.location_reads / n,
            "transition_reads": self.transition_reads / n,
            "lookups": (self.key_comparisons + self.table_reads) / n,
        }


@dataclass
class LookupTables:
    glimpse: int
    start: tuple[int, int]
    codes: np.ndarray  # (P,) uint64 binary patch keys
    locations: list[np.ndarray]  # per glimpse t >= 1: (states, 2) pixel centres
    transitions: list[np.ndarray]  # per glimpse: (states, P) next state, or class at the last
    levels: int = 1
    hidden_clusters: int = 0
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def glimpses(self) -> int:
        return len(self.transitions)

    @property
    def key_bits(self) -> int:
        return self.glimpse * self.glimpse * self.levels

    @property
    def entries(self) -> int:
        return (
            len(self.codes)
            + sum(len(t) for t in self.locations)
            + sum(t.size for t in self.transitions)
        )

    @property
    def bytes(self) -> int:
        """Keys: ceil(bits / 8) bytes each; locations: 2 bytes (row, column); transition values:
        1 byte up to 256 states or classes, else 2."""
        key_bytes = -(-self.key_bits // 8)
        value_bytes = sum(t.size * (1 if t.max(initial=0) < 256 else 2) for t in self.transitions)
        return len(self.codes) * key_bytes + 2 * sum(len(t) for t in self.locations) + value_bytes


def patch_codes(patches: np.ndarray, levels: int) -> np.ndarray:
    """(n, pixels) patches -> (n,) uint64 thermometer codes of pixels x levels <= 64 bits: bit
    l * pixels + i is set when pixel i exceeds (l + 1) / (levels + 1)."""
    return binary_codes(thermometer(patches, levels), 0.5)


def thermometer(patches: np.ndarray, levels: int) -> np.ndarray:
    patches = np.asarray(patches)
    return np.concatenate([patches > (level + 1) / (levels + 1) for level in range(levels)], axis=1)


def binary_codes(patches: np.ndarray, threshold: float) -> np.ndarray:
    """(n, bits <= 64) patches -> (n,) uint64 codes, bit i = pixel i > threshold."""
    bits = np.asarray(patches) > threshold
    weights = np.left_shift(np.uint64(1), np.arange(bits.shape[1], dtype=np.uint64))
    return (
        np.bitwise_or.reduce(np.where(bits, weights, np.uint64(0)), axis=1)
        if bits.shape[1]
        else np.zeros(len(bits), np.uint64)
    )


def read_patches(images: np.ndarray, pixels: np.ndarray, size: int) -> np.ndarray:
    """(n, size * size) crops of (n, 1, H, W) images centred at `pixels` (top-left = centre - size // 2),
    zero outside: memory reads at computed addresses, no arithmetic on the pixels."""
    padded = np.pad(np.asarray(images)[:, 0], ((0, 0), (size, size), (size, size)))
    offsets = np.arange(size)
    rows = (pixels[:, 0] - size // 2 + size)[:, None] + offsets
    cols = (pixels[:, 1] - size // 2 + size)[:, None] + offsets
    return padded[
        np.arange(len(images))[:, None, None], rows[:, :, None], cols[:, None, :]
    ].reshape(len(images), -1)


def nearest_key(query: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Index of the nearest code in Hamming distance (ties: the lower index)."""
    return np.bitwise_count(query[:, None] ^ codes[None, :]).argmin(axis=1)


def kmeans(data: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids, labels): scikit-learn's k-means (k-means++ start, one run) fitted on at most
    FIT_LIMIT rows drawn with `seed`, then every row assigned to its nearest centroid. With at most k
    distinct rows in the fitted sample, the distinct rows of all the data are the centroids."""
    from sklearn.cluster import KMeans

    data = np.asarray(data, dtype=np.float64)
    rng = np.random.default_rng(seed)
    fit = data if len(data) <= FIT_LIMIT else data[rng.choice(len(data), FIT_LIMIT, replace=False)]
    if len(np.unique(fit, axis=0)) <= k:
        distinct = np.unique(data, axis=0)
        if len(distinct) <= k:
            return distinct, _nearest(data, distinct)
    model = KMeans(k, init="k-means++", n_init=1, max_iter=50, random_state=int(seed)).fit(fit)
    return model.cluster_centers_, _nearest(data, model.cluster_centers_)


def _nearest(data: np.ndarray, centroids: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Index of the nearest centroid (squared Euclidean distance) of every row."""
    norms = (centroids**2).sum(axis=1)
    return (
        np.concatenate(
            [
                (norms[None, :] - 2 * data[i : i + chunk] @ centroids.T).argmin(axis=1)
                for i in range(0, len(data), chunk)
            ]
        )
        if len(data)
        else np.zeros(0, np.int64)
    )


def build_tables(
    model: RecurrentAttention,
    x: np.ndarray,
    hidden_clusters: int,
    patch_clusters: int,
    seed: int = 0,
    levels: int = 1,
    seen: Trajectory | None = None,
) -> LookupTables:
    """Tables that memorize what `model` computes on the training inputs `x` (`seen`: its
    trajectory on `x`, when already computed)."""
    if model.glimpse * model.glimpse * levels > 64 or levels < 1:
        raise UsageError(
            f"lookup keys are at most 64 bits: glimpse^2 x levels must be <= 64, got glimpse "
            f"{model.glimpse}, levels {levels}",
            field="architecture.kwargs.glimpse",
        )
    seen = seen if seen is not None else trajectory(model, x)
    codes = _codebook(seen.patches, patch_clusters, levels, seed)
    start = (int(seen.pixels[0, 0, 0]), int(seen.pixels[0, 0, 1]))
    states = np.zeros(len(x), np.int64)
    previous = np.zeros((1, model.hidden))
    locations: list[np.ndarray] = []
    transitions: list[np.ndarray] = []
    for t in range(model.glimpses):
        if t == 0:
            where = np.asarray([start])
        else:
            # a state no training example is in looks where the RAM's policy sends its centroid
            where = _most_frequent_rows(
                states, seen.pixels[t], _computed_locations(model, previous)
            )
            locations.append(where)
        keys = nearest_key(
            patch_codes(read_patches(x, where[states], model.glimpse), levels), codes
        )
        if t == model.glimpses - 1:
            targets, centroids = seen.predicted, None
        else:
            centroids, targets = kmeans(seen.hidden[t], hidden_clusters, seed + t)
        table = _vote(states, keys, targets, len(previous), codes)
        transitions.append(table)
        states = table[states, keys]
        previous = centroids
    return LookupTables(
        model.glimpse, start, codes, locations, transitions, levels, hidden_clusters
    )


@torch.inference_mode()
def _computed_locations(model: RecurrentAttention, centroids: np.ndarray) -> np.ndarray:
    return model.pixels(model.locate(torch.tensor(centroids, dtype=torch.float32))).numpy()


def lookup_inference(tables: LookupTables, x: np.ndarray) -> tuple[np.ndarray, OpCounts]:
    """Classes by lookups only, and the operations it took."""
    n, size, keys = len(x), tables.glimpse, len(tables.codes)
    counts = OpCounts(examples=n)
    states = np.zeros(n, np.int64)
    for t, transition in enumerate(tables.transitions):
        if t == 0:
            pixels = np.broadcast_to(np.asarray(tables.start), (n, 2))
        else:
            pixels = tables.locations[t - 1][states]
            counts.location_reads += n
        query = patch_codes(read_patches(x, pixels, size), tables.levels)
        counts.patch_reads += n * size
        found = nearest_key(query, tables.codes)
        counts.key_comparisons += n * keys
        counts.bits_compared += n * keys * tables.key_bits
        states = transition[states, found]
        counts.transition_reads += n
    return states, counts


def _codebook(patches: np.ndarray, k: int, levels: int, seed: int) -> np.ndarray:
    bits = patches.shape[-1]
    binary = thermometer(patches.reshape(-1, bits), levels)
    distinct = np.unique(binary_codes(binary, 0.5))
    if len(distinct) <= k:  # every code seen in training is a key
        return distinct
    rng = np.random.default_rng(seed)
    fit = (
        binary
        if len(binary) <= FIT_LIMIT
        else binary[rng.choice(len(binary), FIT_LIMIT, replace=False)]
    )
    centroids, _ = kmeans(fit.astype(np.float64), k, seed)
    return np.unique(binary_codes(centroids, 0.5))


def _most_frequent_rows(groups: np.ndarray, rows: np.ndarray, default: np.ndarray) -> np.ndarray:
    """Per group, its most frequent row of `rows` (ties: the smallest); `default`'s row if empty."""
    out = default.copy()
    for g in range(len(default)):
        members = rows[groups == g]
        if len(members):
            values, freq = np.unique(members, axis=0, return_counts=True)
            out[g] = values[freq.argmax()]
    return out


def _vote(
    states: np.ndarray,
    keys: np.ndarray,
    targets: np.ndarray,
    count: int,
    codes: np.ndarray,
) -> np.ndarray:
    """(count, len(codes)) table: the most frequent target of each (state, key) seen (ties: the
    smallest), unseen keys filled from the nearest seen code of the same state."""
    width = int(targets.max()) + 1
    cells, freq = np.unique((states * len(codes) + keys) * width + targets, return_counts=True)
    cell, target = cells // width, cells % width
    order = np.lexsort(
        (target, -freq, cell)
    )  # per cell: the most frequent target first, then the smallest
    first = order[np.r_[True, cell[order][1:] != cell[order][:-1]]]
    table = np.zeros(count * len(codes), np.int64)
    seen = np.zeros(count * len(codes), bool)
    table[cell[first]], seen[cell[first]] = target[first], True
    table, seen = table.reshape(count, len(codes)), seen.reshape(count, len(codes))
    distance = np.bitwise_count(codes[:, None] ^ codes[None, :]).astype(np.int64)
    for s in range(count):
        known = np.flatnonzero(seen[s])
        if len(known) == 0:
            continue  # a state no training example reached keeps its zeros
        nearest = known[distance[:, known].argmin(axis=1)]
        table[s] = table[s, nearest]
    return table
