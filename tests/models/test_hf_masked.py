"""Masked LMs: the masked-recipe pre-training (deterministic, cached by recipe + data + seed, BERT's
corruption) and the hf-masked adapter's ranks and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_texts

from memeval.cache import OutputCache, sha256_file
from memeval.data import Sample
from memeval.errors import UsageError
from memeval.models import AdapterContext, HFMasked, MaskedRecipe
from memeval.models.hf_masked import HFMaskedParams
from memeval.models.masked_recipe import SPECIALS, MaskedRecipeParams, _masked_batch, word_tokenizer
from memeval.models.recipe import ArchitectureRecipe, save_untrained

TINY = {"dataset": "train", "architecture": {"n_layer": 1, "hidden": 16, "heads": 2, "max_positions": 16},
        "training": {"epochs": 2, "batch_size": 8}}


def _context(tmp_path, seed, logs):
    samples = [Sample(id=str(i), text=t) for i, t in enumerate(tiny_texts(16))]
    return AdapterContext(base_dir=tmp_path, seed=seed, cache=OutputCache(tmp_path / "cache"),
                          cache_dir=tmp_path / "cache", load_dataset=lambda name: samples, log=logs.append)


def test_masked_recipe_trains_once_per_recipe_data_and_seed(tmp_path):
    logs: list[str] = []
    params = MaskedRecipeParams.model_validate(TINY)
    first = MaskedRecipe(params, _context(tmp_path, 0, logs))
    again = MaskedRecipe(params, _context(tmp_path, 0, logs))
    other = MaskedRecipe(params, _context(tmp_path, 1, logs))
    assert sum(line.startswith("pre-training") for line in logs) == 2  # seed 0 once, seed 1 once
    assert first.location == again.location != other.location
    weights = [sha256_file(f"{m.location}/model.safetensors") for m in (first, again, other)]
    assert weights[0] == weights[1] != weights[2]
    assert first.identity() != other.identity() and first.identity()["adapter"] == "masked-recipe"
    assert len(first.details()["training"]["loss_curve"]) == 2
    # A word-level tokenizer: one token per word, [CLS] and [SEP] around, the specials not scored.
    ids = first.tokenize(["the lazy dog"])[0]
    assert len(ids) == 5 and first.special_mask(ids) == [True, False, False, False, True]


def test_bert_corruption_masks_only_words_and_keeps_labels():
    tokenizer = word_tokenizer(tiny_texts(40))
    sequences = tokenizer(tiny_texts(40), add_special_tokens=True)["input_ids"]
    ids, mask, labels = _masked_batch(sequences, tokenizer, 0.15, np.random.default_rng(0))
    chosen = labels != -100
    assert (labels[chosen] >= len(SPECIALS)).all()  # never a special token or padding
    assert chosen.any(dim=1).all()  # every document teaches at least one word
    share_masked = (ids[chosen] == tokenizer.mask_token_id).float().mean()
    assert 0.6 < share_masked < 0.95  # about 80% of the chosen words become [MASK]
    unchanged = ~chosen & (mask == 1)
    original = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        original[row, :len(seq)] = torch.tensor(seq)
    assert torch.equal(ids[unchanged], original[unchanged])


def test_ranks_count_the_tokens_scoring_higher(tmp_path):
    logs: list[str] = []
    model = MaskedRecipe(MaskedRecipeParams.model_validate(TINY), _context(tmp_path, 0, logs))
    ids = model.tokenize(["red fox jumps over the lazy dog"])[0]
    ranks = model.masked_ranks([ids], [[1, 3]])[0]
    for position, rank in zip([1, 3], ranks, strict=True):
        masked = torch.tensor([ids])
        masked[0, position] = model.tokenizer.mask_token_id
        with torch.no_grad():
            logits = model.torch_model(input_ids=masked).logits[0, position]
        assert rank == int((logits > logits[ids[position]]).sum())


def test_hf_masked_rejects_a_missing_directory_and_a_model_without_a_mask_token(tmp_path):
    context = _context(tmp_path, 0, [])
    with pytest.raises(UsageError, match="does not exist"):
        HFMasked(HFMaskedParams(path="nowhere"), context)
    save_untrained(tmp_path / "gpt2", ArchitectureRecipe(n_layer=1, n_embd=16, n_head=2, n_positions=16))
    with pytest.raises(UsageError, match="no mask token"):
        HFMasked(HFMaskedParams(path="gpt2"), context).tokenize(["a"])
