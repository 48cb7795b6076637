"""`masked-recipe`: a tiny BERT-style masked LM that memeval pre-trains itself on a suite dataset,
then loads through `hf-masked` like any checkpoint.

The tokenizer is word-level (whitespace and punctuation split, lower-cased, vocabulary = the
corpus's words), so a masked token is a whole word. Training is BERT's masked-LM objective (15%
of the words chosen, 80% of those masked, 10% replaced by a random word, 10% kept), deterministic
under the suite seed, run once and cached under the hash of recipe + data + seed, as `recipe` does.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, model_validator

from memeval.data import Sample, fingerprint, iter_texts
from memeval.files import build_once
from memeval.models.base import AdapterContext
from memeval.models.hf_masked import HFMasked, HFMaskedParams
from memeval.models.recipe import _lr_factor, epoch_reporter
from memeval.suite import Strict
from memeval.threads import TorchThreads

MASKED_RECIPE_FORMAT = 1
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class MaskedArchitecture(Strict):
    n_layer: int = Field(2, ge=1, description="transformer blocks")
    hidden: int = Field(64, ge=8, description="width")
    heads: int = Field(4, ge=1, description="attention heads (divides hidden)")
    max_positions: int = Field(64, ge=8, description="longest sequence in tokens, [CLS] and [SEP] included")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> MaskedArchitecture:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        return self


class MaskedTraining(Strict):
    epochs: int = Field(30, ge=1, description="passes over the dataset")
    batch_size: int = Field(16, ge=1, description="documents per step")
    learning_rate: float = Field(2e-3, gt=0, description="AdamW learning rate (cosine decay)")
    mask_probability: float = Field(0.15, gt=0, lt=1, description="share of words chosen for prediction")
    threads: int = Field(1, ge=1, description="torch threads while training (part of the recipe hash)")


class MaskedRecipeParams(Strict):
    dataset: str = Field(description="name of the suite dataset to pre-train on")
    architecture: MaskedArchitecture = Field(default_factory=MaskedArchitecture, description="the BERT shape")
    training: MaskedTraining = Field(default_factory=MaskedTraining, description="optimisation settings")
    batch_size: int = Field(64, ge=1, description="masked sequences per forward pass at inference")
    threads: int | None = Field(1, ge=1, description="torch threads at inference")


class MaskedRecipe(HFMasked):
    name = "masked-recipe"
    summary = "a tiny BERT-style masked LM pre-trained by memeval on a suite dataset, cached by recipe + data hash"
    Params = MaskedRecipeParams  # type: ignore[assignment]
    capabilities = HFMasked.capabilities | {"train"}

    def __init__(self, params: MaskedRecipeParams, context: AdapterContext):
        self.recipe = params
        directory = masked_model_dir(params, context.load_dataset(params.dataset), context)
        super().__init__(HFMaskedParams(path=str(directory), batch_size=params.batch_size, threads=params.threads),
                         context)

    @classmethod
    def dataset_refs(cls, params: BaseModel) -> list[tuple[str, str]]:
        return [("dataset", params.dataset)]  # type: ignore[attr-defined]

    def identity(self) -> dict[str, Any]:
        saved = json.loads((Path(self.location) / "recipe.json").read_text())
        return {**super().identity(), "adapter": self.name, "recipe": saved["recipe_hash"]}

    def details(self) -> dict[str, Any]:
        saved = json.loads((Path(self.location) / "recipe.json").read_text())
        log = saved.get("log", [])
        return {"training": {"documents": saved.get("documents"), "epochs": self.recipe.training.epochs,
                             "seconds": round(sum(e["seconds"] for e in log), 2),
                             "loss_curve": [round(e["loss"], 6) for e in log]}}


def masked_recipe_hash(params: MaskedRecipeParams, data_fingerprint: str, seed: int) -> str:
    trained_on = params.model_dump(include={"architecture", "training"})
    blob = json.dumps([MASKED_RECIPE_FORMAT, trained_on, data_fingerprint, seed], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def masked_model_dir(params: MaskedRecipeParams, samples: list[Sample], context: AdapterContext) -> Path:
    """The trained model's directory, training it first if no cache holds it."""
    key = masked_recipe_hash(params, fingerprint(samples), context.seed)
    final = context.cache_dir / "masked-recipes" / key

    def build(work: Path) -> None:
        context.log(f"pre-training masked recipe model {key} on {len(samples)} documents")
        log = train_masked(params, list(iter_texts(samples)), context.seed, work,
                           progress=epoch_reporter(params.training.epochs, context.log))
        info = {"recipe_hash": key, "recipe": params.model_dump(), "seed": context.seed, "documents": len(samples),
                "log": log}
        (work / "recipe.json").write_text(json.dumps(info, indent=2))

    build_once(final, build, context.log, lambda: context.cache.require(1, f"trained masked recipe model {key}"))
    return final


def word_tokenizer(texts: list[str]) -> Any:
    """A word-level tokenizer over the corpus's words, BERT's specials and template."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIALS, show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def train_masked(params: MaskedRecipeParams, texts: list[str], seed: int, out: Path,
                 progress: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Pre-train and save the model and its tokenizer to `out`; returns the per-epoch log."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    arch, opts = params.architecture, params.training
    tokenizer = word_tokenizer(texts)
    sequences = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=arch.max_positions)["input_ids"]
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=arch.hidden, num_hidden_layers=arch.n_layer,
                        num_attention_heads=arch.heads, intermediate_size=4 * arch.hidden,
                        max_position_embeddings=arch.max_positions, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, pad_token_id=tokenizer.pad_token_id)
    rng = np.random.default_rng(seed)
    log: list[dict[str, float]] = []
    with TorchThreads(opts.threads):
        torch.manual_seed(seed)
        model = BertForMaskedLM(config)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=opts.learning_rate)
        total = math.ceil(len(sequences) / opts.batch_size) * opts.epochs
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, 0, total))
        for epoch in range(opts.epochs):
            started, losses = time.perf_counter(), []
            order = rng.permutation(len(sequences))
            for start in range(0, len(order), opts.batch_size):
                ids, mask, labels = _masked_batch([sequences[i] for i in order[start:start + opts.batch_size]],
                                                  tokenizer, opts.mask_probability, rng)
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
            log.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - started})
            if progress is not None:
                progress(log[-1])
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return log


def _masked_batch(sequences: list[list[int]], tokenizer: Any, probability: float, rng: np.random.Generator
                  ) -> tuple[Any, Any, Any]:
    """BERT's corruption: of the chosen words, 80% become [MASK], 10% a random word, 10% stay."""
    import torch

    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), tokenizer.pad_token_id, dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = seq
    words = ids >= len(SPECIALS)  # the specials take the first ids
    chosen = words & (rng.random(ids.shape) < probability)
    for row in np.flatnonzero(~chosen.any(axis=1) & words.any(axis=1)):  # every document teaches something
        chosen[row, rng.choice(np.flatnonzero(words[row]))] = True
    labels = np.where(chosen, ids, -100)
    draw = rng.random(ids.shape)
    corrupted = ids.copy()
    corrupted[chosen & (draw < 0.8)] = tokenizer.mask_token_id
    swap = chosen & (draw >= 0.8) & (draw < 0.9)
    corrupted[swap] = rng.integers(len(SPECIALS), len(tokenizer), size=int(swap.sum()))
    mask = (ids != tokenizer.pad_token_id).astype(np.int64)
    return torch.from_numpy(corrupted), torch.from_numpy(mask), torch.from_numpy(labels)
