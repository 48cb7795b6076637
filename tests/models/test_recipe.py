"""Recipe models: deterministic under the seed, cached by recipe + data, loadable by transformers."""

from __future__ import annotations

from conftest import TINY_RECIPE, tiny_texts

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
    again = Recipe(p, context(0))
    assert len(logs) == 1 and first.location == again.location
    assert first.identity() == again.identity()
    other_seed = Recipe(p, context(1))
    assert len(logs) == 2 and other_seed.location != first.location
    assert recipe_hash(p, "data-a", 0) != recipe_hash(p, "data-b", 0)
    # Inference-only settings do not retrain.
    assert recipe_hash(p, "x", 0) == recipe_hash(p.model_copy(update={"batch_size": 99}), "x", 0)
