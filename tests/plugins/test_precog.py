"""precog.score end to end on a tiny masked LM memeval pre-trains in seconds on a corpus where the
downstream examples appear 0, 1, 5 and 20 times: PreCog against exposure, k and a fill-mask
pipeline, one forward pass per token, and the correctness analysis against scipy."""

from __future__ import annotations

import importlib.util
import json
import random
import textwrap

import numpy as np
import pytest
from helpers import REPO, write_jsonl
from scipy import stats

spec = importlib.util.spec_from_file_location("make_precog", REPO / "suites/data/make_precog.py")
make_precog = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_precog)

SUITE = """
memeval: 1
suite: precog-mini
seed: 0
datasets:
  corpus: {loader: jsonl, path: corpus.jsonl}
  downstream: {loader: jsonl, path: downstream.jsonl, id_field: id}
  topics: {loader: jsonl, path: topics.jsonl, id_field: id}
models:
  mlm:
    adapter: masked-recipe
    dataset: corpus
    architecture: {n_layer: 1, hidden: 48, heads: 4, max_positions: 16}
    training: {epochs: 40, batch_size: 32, learning_rate: 0.004}
    batch_size: 20
evaluations:
  - id: probe
    method: precog.score
    model: mlm
    dataset: downstream
    params: {ks: [1, 2, 5, 50], label_field: label, group_field: exposure, folds: 3}
  - id: planted
    method: precog.score
    model: mlm
    dataset: downstream
    params: {k: 2, ks: [2], correct_field: planted, buckets: [0, 0.5, 0.9, 1]}
  - id: finetuned
    method: precog.score
    model: mlm
    dataset: topics
    params: {label_field: topic, fine_tune: {epochs: 10, learning_rate: 0.003}, folds: 4}
  - id: coin
    method: precog.score
    model: mlm
    dataset: topics
    params: {label_field: coin, fine_tune: {epochs: 10, learning_rate: 0.003}, folds: 4}
report: {formats: [json, html]}
"""


def _run(root, suite_text, name):
    from memeval.cli import main

    (root / f"{name}.yaml").write_text(textwrap.dedent(suite_text))
    code = main(["run", str(root / f"{name}.yaml"), "--out", str(root / name), "--cache-dir", str(root / "c"), "-q"])
    run = json.loads((root / name / "run.json").read_text())
    evaluations = {e["id"]: e for e in run["evaluations"]}
    records = {k: [json.loads(line) for line in (root / name / e["records_path"]).open()]
               for k, e in evaluations.items()}
    return code, evaluations, records


@pytest.fixture(scope="module")
def precog_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("precog")
    corpus, downstream = make_precog.build(per_group=8, background=60)
    rng = np.random.default_rng(0)
    for row in downstream:  # a planted correctness, more often right on examples seen more often
        row["planted"] = bool(rng.random() < 0.3 + 0.03 * row["exposure"])
    write_jsonl(root / "corpus.jsonl", corpus)
    write_jsonl(root / "downstream.jsonl", downstream)
    words = random.Random(1)  # 64 fresh documents, their topic, and a coin flip nothing can predict
    write_jsonl(root / "topics.jsonl", [{"id": f"t{i}", "topic": ("animal", "tool")[i % 2],
                                         "text": make_precog.document(words, make_precog.TOOLS if i % 2
                                                                      else make_precog.ANIMALS),
                                         "coin": ("heads", "tails")[int(rng.random() < 0.5)]} for i in range(64)])
    code, evaluations, records = _run(root, SUITE, "run")
    return root, code, evaluations, records, downstream


@pytest.mark.slow  # pre-training the tiny masked LM: about 8 s
def test_precog_rises_with_exposure_and_with_k(precog_run):
    _, code, evaluations, records, _ = precog_run
    assert code == 0
    groups = evaluations["probe"]["artifacts"]["by_group"]
    means = [groups[str(e)]["precog"] for e in (0, 1, 5, 20)]
    assert all(b >= a for a, b in zip(means, means[1:], strict=False)), means
    assert means[0] < 0.25 and means[3] > 0.75
    for r in records["probe"]:
        at = [r["precog_at"][k] for k in ("1", "2", "5", "50")]
        assert all(b >= a for a, b in zip(at, at[1:], strict=False))
        ranks = np.asarray(r["ranks"])
        assert at == [float(np.mean(ranks < k)) for k in (1, 2, 5, 50)]
        assert r["precog"] == at[0]


def test_one_forward_pass_per_token(precog_run):
    _, _, evaluations, records, downstream = precog_run
    assert all(r["tokens"] == 8 for r in records["probe"])  # 8 words, one token each, specials not scored
    assert evaluations["probe"]["artifacts"]["forward_passes"] == 8 * len(downstream)
    from memeval.cache import OutputCache
    from memeval.models import AdapterContext, HFMasked
    from memeval.models.hf_masked import HFMaskedParams

    root = precog_run[0]
    directory = next((root / "c" / "masked-recipes").iterdir())
    context = AdapterContext(base_dir=root, seed=0, cache=OutputCache(root / "c2"), cache_dir=root / "c2",
                             load_dataset=lambda name: [])
    model = HFMasked(HFMaskedParams(path=str(directory), batch_size=7), context)
    ids = model.tokenize([d["text"] for d in downstream[:5]])
    positions = [[i for i, s in enumerate(model.special_mask(row)) if not s] for row in ids]
    model.masked_ranks(ids, positions)
    assert model.counter.rows == 40 and model.counter.batches == 6  # ceil(40 / 7)
    again = model.masked_ranks(ids, positions)  # now from the output cache: no forward pass
    assert model.counter.rows == 40 and model.counter.cache_hits == 5
    assert [list(r) for r in again] == [records["probe"][i]["ranks"] for i in range(5)]


@pytest.mark.slow  # importing transformers' pipelines takes seconds
def test_ranks_agree_with_the_fill_mask_pipeline(precog_run):
    from transformers import pipeline

    root, _, _, records, downstream = precog_run
    directory = next((root / "c" / "masked-recipes").iterdir())
    fill = pipeline("fill-mask", model=str(directory), top_k=5, device="cpu")
    by_id = {r["id"]: r for r in records["probe"]}
    for row in downstream[::8]:
        words = row["text"].split()
        for position, word in enumerate(words):
            masked = " ".join(words[:position] + ["[MASK]"] + words[position + 1:])
            top = [p["token_str"].strip() for p in fill(masked)]
            rank = by_id[row["id"]]["ranks"][position]
            assert (word in top) == (rank < 5)
            if rank < 5:
                assert top.index(word) == rank


def test_correctness_analysis_matches_scipy(precog_run):
    _, _, evaluations, records, downstream = precog_run
    rows = records["planted"]
    planted = {d["id"]: d["planted"] for d in downstream}
    assert all(r["correct"] == planted[r["id"]] for r in rows)
    metrics = {m["name"]: m for m in evaluations["planted"]["metrics"]}
    precog = np.array([r["precog"] for r in rows])
    correct = np.array([r["correct"] for r in rows])
    assert metrics["spearman"]["value"] == pytest.approx(stats.spearmanr(precog, correct).statistic)
    assert metrics["spearman"]["ci_low"] < metrics["spearman"]["value"] < metrics["spearman"]["ci_high"]
    assert metrics["accuracy"]["value"] == pytest.approx(correct.mean())
    assert metrics["precog_mean"]["value"] == pytest.approx(precog.mean())
    edges = [0, 0.5, 0.9, 1]
    index = np.clip(np.digitize(precog, edges) - 1, 0, 2)
    buckets = evaluations["planted"]["artifacts"]["buckets"]
    for i, bucket in enumerate(buckets):
        assert bucket["n"] == int((index == i).sum())
        if bucket["n"]:
            assert bucket["accuracy"] == pytest.approx(correct[index == i].mean())
    filled = [i for i in range(3) if (index == i).any()]
    assert metrics["accuracy_low_precog"]["value"] == pytest.approx(correct[index == filled[0]].mean())
    assert metrics["accuracy_high_precog"]["value"] == pytest.approx(correct[index == filled[-1]].mean())
    probe = {m["name"]: m["value"] for m in evaluations["probe"]["metrics"]}
    assert probe["accuracy"] == pytest.approx(np.mean([r["correct"] for r in records["probe"]]))


def test_the_hf_masked_adapter_loads_the_same_model_from_its_directory(precog_run):
    root, _, _, records, _ = precog_run
    directory = next((root / "c" / "masked-recipes").iterdir())
    suite = f"""
    memeval: 1
    suite: precog-path
    datasets:
      downstream: {{loader: jsonl, path: downstream.jsonl, id_field: id}}
    models:
      mlm: {{adapter: hf-masked, path: {directory}}}
    evaluations:
      - {{id: planted, method: precog.score, model: mlm, dataset: downstream, params: {{k: 2, ks: [2]}}}}
    report: {{formats: [json, html]}}
    """
    code, evaluations, again = _run(root, suite, "path")
    assert code == 0
    assert evaluations["planted"]["artifacts"]["forward_passes"] == 8 * len(again["planted"])  # another model id
    code, evaluations, warm = _run(root, suite, "path")  # the same model again: every rank from the cache
    assert evaluations["planted"]["artifacts"]["forward_passes"] == 0
    assert [r["ranks"] for r in warm["planted"]] == [r["ranks"] for r in again["planted"]]
    assert [r["ranks"] for r in again["planted"]] == [r["ranks"] for r in records["planted"]]
    page = (root / "path" / "report.html").read_text()
    assert 'data-plugin-section="PreCog"' in page and "Mean PreCog@k against k" in page


def test_fine_tuned_correctness_is_out_of_fold(precog_run):
    _, _, evaluations, records, _ = precog_run
    accuracy = {name: {m["name"]: m["value"] for m in evaluations[name]["metrics"]}["accuracy"]
                for name in ("finetuned", "coin")}
    assert accuracy["finetuned"] >= 0.75  # the topic is learnable from 48 examples
    # Random labels cannot be predicted for examples the classifier was not trained on: an
    # in-fold prediction would have memorized them.
    assert accuracy["coin"] <= 0.65
    assert accuracy["finetuned"] == pytest.approx(np.mean([r["correct"] for r in records["finetuned"]]))


@pytest.mark.parametrize(("params", "message"), [
    ("{label_field: exposure}", "exactly two labels"),
    ("{fine_tune: {epochs: 2}}", "fine_tune needs label_field"),
    ("{correct_field: nowhere}", "no field 'nowhere'"),
    ("{ks: [5, 1]}", "ks"),
    ("{correct_field: planted, label_field: label}", "at most one"),
])
def test_bad_params_are_usage_errors(precog_run, capsys, params, message):
    root = precog_run[0]
    from memeval.cli import main

    (root / "bad.yaml").write_text(textwrap.dedent(SUITE).split("evaluations:")[0] + textwrap.dedent(f"""
    evaluations:
      - {{id: bad, method: precog.score, model: mlm, dataset: downstream, params: {params}}}
    """))
    capsys.readouterr()
    code = main(["run", str(root / "bad.yaml"), "--out", str(root / "bad"), "--cache-dir", str(root / "c")])
    assert code == 4 and message in capsys.readouterr().err


def test_the_shipped_precog_data_is_what_its_generator_writes(tmp_path):
    make_precog.write(tmp_path)
    for name in ("corpus.jsonl", "downstream.jsonl"):
        assert (tmp_path / name).read_text() == (REPO / "suites/data/precog" / name).read_text()
    downstream = [json.loads(line) for line in (tmp_path / "downstream.jsonl").open()]
    corpus = [json.loads(line)["text"] for line in (tmp_path / "corpus.jsonl").open()]
    for row in downstream:  # each example appears in the pre-training corpus exactly `exposure` times
        assert corpus.count(row["text"]) == row["exposure"]
