"""Dataset loading through real `datasets`: every file format, fields, limit, shuffle."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from memeval.data import builtin_loaders, rows_to_samples
from memeval.errors import UsageError
from memeval.suite import DatasetSpec, Suite, SuiteFile

ROWS = [{"id": f"r{i}", "text": f"text number {i}", "pre": f"p{i}", "suf": f"s{i}", "ids": [1, 2, i]}
        for i in range(10)]


def suite_file(tmp_path, seed=0):
    spec = Suite.model_validate({"memeval": 1, "suite": "d", "seed": seed, "evaluations": []})
    return SuiteFile(path=tmp_path / "s.yaml", spec=spec)


def load(tmp_path, seed=0, **spec):
    dataset = DatasetSpec.model_validate(spec)
    suite = suite_file(tmp_path, seed)
    return rows_to_samples(builtin_loaders()[dataset.loader](dataset, suite), dataset, suite, "d", seed)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    (tmp_path / "d.csv").write_text("id,text\n" + "".join(f"{r['id']},{r['text']}\n" for r in ROWS))
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    (tmp_path / "d.txt").write_text("".join(r["text"] + "\n" for r in ROWS))
    (tmp_path / "shards").mkdir()
    for half in (0, 1):
        (tmp_path / "shards" / f"part-{half}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in ROWS[half * 5:(half + 1) * 5]))
    return tmp_path


@pytest.mark.parametrize("loader,path", [("jsonl", "d.jsonl"), ("json", "d.json"), ("csv", "d.csv"),
                                         ("parquet", "d.parquet"), ("jsonl", "shards"),
                                         ("jsonl", "shards/*.jsonl")])
def test_formats_load_the_same_samples(files, loader, path):
    samples = load(files, loader=loader, path=path, id_field="id")
    assert [(s.id, s.text) for s in samples] == [(r["id"], r["text"]) for r in ROWS]


def test_text_files_have_one_sample_per_line(files):
    samples = load(files, loader="text", path="d.txt")
    assert [s.text for s in samples] == [r["text"] for r in ROWS] and samples[3].id == "3"


def test_prefix_suffix_tokens_and_meta(files):
    pairs = load(files, loader="jsonl", path="d.jsonl", prefix_field="pre", suffix_field="suf")
    assert pairs[2].prefix == "p2" and pairs[2].suffix == "s2" and pairs[2].full_text == "p2s2"
    tokens = load(files, loader="jsonl", path="d.jsonl", tokens_field="ids")
    assert tokens[4].tokens == [1, 2, 4] and tokens[4].text is None
    assert load(files, loader="jsonl", path="d.jsonl")[0].meta["id"] == "r0"


def test_limit_and_seeded_shuffle(files):
    assert [s.id for s in load(files, loader="jsonl", path="d.jsonl", id_field="id", limit=3)] == ["r0", "r1", "r2"]
    a = [s.id for s in load(files, loader="jsonl", path="d.jsonl", id_field="id", shuffle=True, seed=1)]
    b = [s.id for s in load(files, loader="jsonl", path="d.jsonl", id_field="id", shuffle=True, seed=1)]
    c = [s.id for s in load(files, loader="jsonl", path="d.jsonl", id_field="id", shuffle=True, seed=2)]
    assert a == b != c and sorted(a) == sorted(r["id"] for r in ROWS)


def test_hub_dataset_offline_is_a_clear_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot load hub dataset 'no-such/dataset-xyz'"):
        load(tmp_path, loader="hub", path="no-such/dataset-xyz")


def test_prefix_without_suffix_is_rejected():
    with pytest.raises(ValueError, match="go together"):
        DatasetSpec.model_validate({"loader": "jsonl", "path": "x", "prefix_field": "p"})


@pytest.mark.parametrize("path", ["d.jsonl", "shards", "d.parquet"])
def test_rows_of_plain_arrow_files_are_read_from_them_not_through_the_map(files, path):
    from memeval import data

    loader = "parquet" if path.endswith("parquet") else "jsonl"
    dataset = DatasetSpec.model_validate({"loader": loader, "path": path})
    rows = builtin_loaders()[loader](dataset, suite_file(files))
    assert data._arrow_files(rows) == [f["filename"] for f in rows.cache_files]
    assert list(data._rows(rows)) == list(rows)
    # Anything that is not the files whole and in order is read through `datasets`.
    assert data._arrow_files(rows.with_format("numpy")) is None
    for changed in (rows.select(range(2, 7)), rows.select([3, 1, 2]), rows.shuffle(seed=0)):
        assert data._arrow_files(changed) is None
        assert list(data._rows(changed)) == list(changed)
