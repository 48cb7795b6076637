"""Recipe models: deterministic under the seed, cached by recipe + data, loadable by transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TINY_RECIPE, tiny_texts

from memeval.cache import OutputCache, sha256_file
from memeval.data import Sample
from memeval.models import AdapterContext, Recipe
from memeval.models.recipe import RecipeParams, build_tokenizer, recipe_hash, train


def params(**training):
    raw = {k: v for k, v in TINY_RECIPE.items() if k != "adapter"}
    raw["training"] = {**raw["training"], **training}
    return RecipeParams.model_validate(raw)


def test_training_is_deterministic_under_the_seed(tmp_path):
    texts = tiny_texts(16)
    log_a = train(params(epochs=2), texts, seed=1, out=tmp_path / "a")
    train(params(epochs=2), texts, seed=1, out=tmp_path / "b")
    train(params(epochs=2), texts, seed=2, out=tmp_path / "c")
    digest = {name: sha256_file(tmp_path / name / "model.safetensors") for name in "abc"}
    assert digest["a"] == digest["b"] != digest["c"]
    assert len(log_a) == 2 and log_a[1]["loss"] < log_a[0]["loss"]


def test_byte_tokenizer_ids_are_bytes_and_bpe_is_smaller():
    texts = tiny_texts(30)
    byte_tok = build_tokenizer(params().tokenizer, texts)
    ids = byte_tok("aé")["input_ids"]
    assert ids[1:] == list("aé".encode())
    assert ids[0] == byte_tok.bos_token_id
    bpe = build_tokenizer(params().tokenizer.model_copy(update={"kind": "bpe", "vocab_size": 300}), texts)
    assert len(bpe(texts[0])["input_ids"]) < len(byte_tok(texts[0])["input_ids"])
    assert bpe.decode(bpe(texts[0], add_special_tokens=False)["input_ids"]) == texts[0]


def test_recipe_is_trained_once_and_keyed_by_data_and_seed(tmp_path):
    samples = [Sample(id=str(i), text=t) for i, t in enumerate(tiny_texts(12))]
    logs: list[str] = []
    cache = OutputCache(tmp_path / "cache")

    def context(seed):
        return AdapterContext(base_dir=tmp_path, seed=seed, cache=cache, cache_dir=tmp_path / "cache",
                              load_dataset=lambda name: samples, log=logs.append)

    p = params(epochs=1)
    first = Recipe(p, context(0))
    progress = [line for line in logs if "epoch" in line]
    assert len(progress) == 1 and progress[0].startswith("  epoch 1/1: training loss ")  # training is not silent
    logs[:] = [line for line in logs if line.startswith("training")]
    again = Recipe(p, context(0))
    assert len(logs) == 1 and first.location == again.location
    assert first.identity() == again.identity()
    trained = first.details()["training"]  # run.json and the report's Models section show it
    assert trained["parameters"] == sum(t.numel() for t in first.torch_model.parameters())
    assert len(trained["loss_curve"]) == 1 and trained["documents"] == 12 and "training" not in first.identity()
    other_seed = Recipe(p, context(1))
    logs[:] = [line for line in logs if line.startswith("training")]
    assert len(logs) == 2 and other_seed.location != first.location
    assert recipe_hash(p, "data-a", 0) != recipe_hash(p, "data-b", 0)
    # Inference-only settings do not retrain.
    assert recipe_hash(p, "x", 0) == recipe_hash(p.model_copy(update={"batch_size": 99}), "x", 0)


def test_init_from_continues_training_the_base_model(tmp_path):
    base_texts = tiny_texts(12)
    tune_texts = [t.upper() for t in base_texts]
    data = {"base": [Sample(id=str(i), text=t) for i, t in enumerate(base_texts)],
            "tune": [Sample(id=str(i), text=t) for i, t in enumerate(tune_texts)]}
    logs: list[str] = []
    cache = OutputCache(tmp_path / "cache")
    context = AdapterContext(base_dir=tmp_path, seed=0, cache=cache, cache_dir=tmp_path / "cache",
                             load_dataset=data.__getitem__, log=logs.append)
    base_raw = {**{k: v for k, v in TINY_RECIPE.items() if k != "adapter"}, "dataset": "base"}
    base_raw["training"] = {**base_raw["training"], "epochs": 1}
    tuned = RecipeParams.model_validate({"dataset": "tune", "init_from": {**base_raw, "adapter": "recipe"},
                                         "training": {"epochs": 1, "batch_size": 8}})
    assert tuned.architecture == RecipeParams.model_validate(base_raw).architecture  # inherited
    assert Recipe.dataset_refs(tuned) == [("dataset", "tune"), ("init_from", "base")]
    model = Recipe(tuned, context)
    logs[:] = [line for line in logs if line.startswith("training")]
    assert len(logs) == 2 and "from" in logs[1]  # the base first, then the fine-tuning
    base = Recipe(RecipeParams.model_validate(base_raw), context)
    logs[:] = [line for line in logs if line.startswith("training")]
    assert len(logs) == 2  # the base was trained once, for the fine-tuned model
    info = json.loads((Path(model.location) / "recipe.json").read_text())
    assert info["init_from"] == Path(base.location).name == base.identity()["recipe"]
    tokenizer = Path(model.location) / "tokenizer.json"  # the base's tokenizer, unchanged
    assert tokenizer.read_text() == (Path(base.location) / "tokenizer.json").read_text()
    assert model.tokenize(tune_texts) == base.tokenize(tune_texts)
    # Starting from the base differs from training the same recipe from scratch on the same data.
    scratch = tmp_path / "scratch"
    train(RecipeParams.model_validate({**base_raw, "dataset": "tune", "training": tuned.training.model_dump()}),
          tune_texts, seed=0, out=scratch)
    weights = {p: sha256_file(Path(p) / "model.safetensors") for p in (model.location, base.location, scratch)}
    assert len(set(weights.values())) == 3
    # The base's hash is part of the fine-tuned model's: another base, another model.
    other = tuned.model_copy(update={"init_from": tuned.init_from.model_copy(update={"training": tuned.training})})
    assert recipe_hash(other, "x", 0, "base-b") != recipe_hash(tuned, "x", 0, "base-a")
    assert recipe_hash(tuned, "x", 0) == recipe_hash(tuned.model_copy(update={"init_from": None}), "x", 0)


def test_init_from_keeps_the_base_shape(tmp_path, run_cli):
    with pytest.raises(ValueError, match="architecture must match init_from's"):
        RecipeParams.model_validate({"dataset": "b", "architecture": {"n_layer": 3},
                                     "init_from": {"dataset": "a"}})
    with pytest.raises(ValueError, match="recipe"):
        RecipeParams.model_validate({"dataset": "b", "init_from": {"dataset": "a", "adapter": "hf-causal"}})
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "s.yaml").write_text("""
memeval: 1
suite: s
datasets: {a: {loader: jsonl, path: a.jsonl}}
models:
  base: &base {adapter: recipe, dataset: a}
  tuned: {adapter: recipe, dataset: a, init_from: {<<: *base, dataset: missing}}
evaluations: [{id: l, method: lm.loss, model: tuned, dataset: a}]
""")
    code, _, err = run_cli("validate", tmp_path / "s.yaml")
    assert code == 4 and "models.tuned.init_from: unknown dataset 'missing'" in err


def test_training_documents_longer_than_the_context_are_counted(tmp_path):
    p = RecipeParams.model_validate({"dataset": "x", "architecture": {"n_layer": 1, "n_embd": 16, "n_head": 2,
                                                                      "n_positions": 16},
                                     "training": {"epochs": 1}})
    said: list[str] = []
    texts = ["short", "a document of well over fifteen bytes", "another one far longer than the context"]
    train(p, texts, seed=0, out=tmp_path / "m", notice=said.append)
    assert said == ["  truncated: 2 of 3 training documents cut to n_positions - 1 = 15 tokens (by up to 25); "
                    "the model never sees their ends"]
