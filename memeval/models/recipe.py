"""`recipe`: a small GPT-2-style causal LM that memeval trains itself on a suite dataset.

Training is deterministic under the suite seed and runs once: the model is stored under the cache
directory by the hash of recipe + data, then loaded through `hf-causal` like any checkpoint.
With `init_from` (another recipe), training continues from that recipe's trained model, with its
tokenizer and architecture: a fine-tuned model (e.g. one trained to avoid memorized suffixes).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from memeval.data import Sample, fingerprint, iter_texts
from memeval.errors import UsageError
from memeval.files import build_once
from memeval.models.base import AdapterContext
from memeval.models.hf_causal import HFCausal, HFCausalParams
from memeval.suite import Strict
from memeval.threads import TorchThreads

RECIPE_FORMAT = 2  # bump when training changes in a way that should retrain cached models
BOS = "<|endoftext|>"
PAD = "<|pad|>"


class TokenizerRecipe(Strict):
    kind: Literal["bytes", "bpe"] = Field("bytes", description="bytes: one token per byte; bpe: trained on the data")
    vocab_size: int = Field(512, ge=260, description="bpe only: vocabulary size, specials included")


class ArchitectureRecipe(Strict):
    n_layer: int = Field(2, ge=1, description="transformer blocks")
    n_embd: int = Field(64, ge=8, description="width")
    n_head: int = Field(4, ge=1, description="attention heads (divides n_embd)")
    n_positions: int = Field(128, ge=8, description="context length in tokens (longer documents are cut, "
                                                          "and counted, in training)")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ArchitectureRecipe:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


class StopRule(Strict):
    train_sequence_accuracy: float = Field(gt=0, le=1, description="stop once this share of the training "
                                                                   "suffixes is fit exactly")


class TrainingRecipe(Strict):
    epochs: int = Field(10, ge=1, description="passes over the dataset")
    batch_size: int = Field(16, ge=1, description="documents per step")
    learning_rate: float = Field(3e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps, then linear decay")
    threads: int = Field(1, ge=1, description="torch threads while training (1 is fastest for tiny models; "
                                             "part of the recipe hash: another count gives other weights)")
    stop_when: StopRule | None = Field(None, description="stop on fit: after each epoch, the share of training "
                                                         "suffixes whose every token is the teacher-forced argmax "
                                                         "(exactly greedy decoding's; prefix_field/suffix_field "
                                                         "data); `epochs` is then a cap, reported if reached")


class RecipeParams(Strict):
    dataset: str = Field(description="name of the suite dataset to train on")
    tokenizer: TokenizerRecipe = Field(default_factory=TokenizerRecipe, description="how text becomes tokens")
    architecture: ArchitectureRecipe = Field(default_factory=ArchitectureRecipe, description="the GPT-2 shape")
    training: TrainingRecipe = Field(default_factory=TrainingRecipe, description="optimisation settings")
    batch_size: int = Field(32, ge=1, description="inference batch size")
    threads: int | None = Field(1, ge=1, description="torch threads at inference")
    init_from: BaseRecipe | None = Field(None, description="a recipe whose trained model this one continues "
                                                           "training (its tokenizer and architecture are kept); "
                                                           "e.g. a YAML alias of another recipe model")

    @model_validator(mode="after")
    def _inherits_shape(self) -> RecipeParams:
        base = self.init_from
        if base is None:
            return self
        for key in ("tokenizer", "architecture"):
            if key in self.model_fields_set and getattr(self, key) != getattr(base, key):
                raise ValueError(f"{key} must match init_from's (a fine-tuned model keeps its base's {key}); "
                                 f"leave it out")
            setattr(self, key, getattr(base, key).model_copy())
        return self

    def dataset_names(self) -> list[str]:
        """This recipe's dataset and those of the recipes it starts from."""
        return [self.dataset, *(self.init_from.dataset_names() if self.init_from else [])]


class BaseRecipe(RecipeParams):
    """A recipe named by `init_from`; may carry `adapter: recipe` (so a YAML alias of a whole model
    spec works)."""

    adapter: Literal["recipe"] = Field("recipe", description="allowed, so a YAML alias of a recipe model works")


RecipeParams.model_rebuild()


class Recipe(HFCausal):
    name = "recipe"
    summary = "a tiny GPT-2-style LM trained by memeval on a suite dataset, cached by recipe + data hash"
    Params = RecipeParams  # type: ignore[assignment]
    capabilities = HFCausal.capabilities | {"train"}

    def __init__(self, params: RecipeParams, context: AdapterContext):
        self.recipe = params
        samples = context.load_dataset(params.dataset)
        directory = trained_model_dir(params, samples, context)
        hf_params = HFCausalParams(path=str(directory), batch_size=params.batch_size, threads=params.threads)
        super().__init__(hf_params, context)

    @classmethod
    def dataset_refs(cls, params: BaseModel) -> list[tuple[str, str]]:
        names = params.dataset_names()  # type: ignore[attr-defined]
        return [("dataset", names[0]), *(("init_from", name) for name in names[1:])]

    def identity(self) -> dict[str, Any]:
        ident = dict(super().identity())
        ident["adapter"] = self.name
        ident["recipe"] = self._saved["recipe_hash"]
        return ident

    def details(self) -> dict[str, Any]:
        """The recipe's size and its training-loss curve (for run.json and the report)."""
        log = self._saved.get("log", [])
        arch = self.recipe.architecture
        return {"training": {"parameters": self._parameter_count(), "layers": arch.n_layer, "width": arch.n_embd,
                             "epochs": len(log) or self.recipe.training.epochs, "documents": self._saved.get("documents"),
                             "seconds": round(sum(e["seconds"] for e in log), 2),
                             "loss_curve": [round(e["loss"], 6) for e in log]}}

    @cached_property
    def _saved(self) -> dict[str, Any]:
        return json.loads((Path(self.location) / "recipe.json").read_text())

    def _parameter_count(self) -> int:
        """From the weights file's header: no model is loaded (a warm run may never need one)."""
        from safetensors import safe_open

        with safe_open(Path(self.location) / "model.safetensors", framework="np") as weights:
            return int(sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys()))  # noqa: SIM118


def recipe_hash(params: RecipeParams, data_fingerprint: str, seed: int, init_from: str | None = None) -> str:
    """`init_from` is the hash of the recipe training starts from (absent for a model trained from
    scratch, so those keep the hashes they always had)."""
    trained_on = params.model_dump(include={"tokenizer", "architecture", "training"})
    if trained_on["training"].get("stop_when") is None:  # recipes without one keep their hashes
        trained_on["training"].pop("stop_when", None)
    if init_from is not None:
        trained_on["init_from"] = init_from
    blob = json.dumps([RECIPE_FORMAT, trained_on, data_fingerprint, seed], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def trained_model_dir(params: RecipeParams, samples: list[Sample], context: AdapterContext) -> Path:
    """The directory of the model this recipe makes, training it first if no cache holds it (and
    first the model it starts from, with `init_from`): once across processes, never from a damaged
    copy (`files.build_once`)."""
    base = None
    if params.init_from is not None:
        base = trained_model_dir(params.init_from, context.load_dataset(params.init_from.dataset), context)
    key = recipe_hash(params, fingerprint(samples), context.seed, base.name if base else None)
    final = context.cache_dir / "recipes" / key

    def build(work: Path) -> None:
        start = f" from {base.name}" if base else ""
        context.log(f"training recipe model {key}{start} on {len(samples)} documents")
        log = train(params, list(iter_texts(samples)), context.seed, work, init=base,
                    progress=epoch_reporter(params.training.epochs, context.log), notice=context.log,
                    prompts=stop_rule_prompts(params, samples))
        info = {"recipe_hash": key, "recipe": params.model_dump(), "seed": context.seed,
                "documents": len(samples), **({"init_from": base.name} if base else {}), "log": log}
        (work / "recipe.json").write_text(json.dumps(info, indent=2))

    build_once(final, build, context.log, lambda: context.cache.require(1, f"trained recipe model {key}"))
    return final


def stop_rule_prompts(params: RecipeParams, samples: list[Sample]) -> list[str] | None:
    """The prompt (prefix) of each training document, when the recipe stops on fit."""
    if params.training.stop_when is None:
        return None
    if any(s.prefix is None or not s.suffix for s in samples):
        raise UsageError("training.stop_when needs a dataset of prompt -> target pairs (set its prefix_field and "
                         "suffix_field)", field="training.stop_when")
    return [s.prefix or "" for s in samples]


def epoch_reporter(epochs: int, log: Callable[[str], None]) -> Callable[[dict[str, float]], None]:
    """Log about ten progress lines over a training run (every epoch of a short one), and the last."""
    every = max(1, math.ceil(epochs / 10))

    def report(entry: dict[str, float]) -> None:
        epoch = int(entry["epoch"])
        if epoch % every == 0 or epoch == epochs:
            log(f"  epoch {epoch}/{epochs}: training loss {entry['loss']:.4f} ({entry['seconds']:.1f} s)")

    return report


def byte_to_char() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, so token id == byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def build_tokenizer(recipe: TokenizerRecipe, texts: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=recipe.kind == "bpe")
    if recipe.kind == "bytes":
        vocab = {char: byte for byte, char in byte_to_char().items()}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = byte_level
        tok.add_special_tokens([BOS, PAD])
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = byte_level
        trainer = trainers.BpeTrainer(vocab_size=recipe.vocab_size, special_tokens=[BOS, PAD],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer)
    tok.decoder = decoders.ByteLevel()
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=PAD)


def train(params: RecipeParams, texts: list[str], seed: int, out: Path, init: Path | None = None,
          progress: Callable[[dict[str, float]], None] | None = None,
          notice: Callable[[str], None] | None = None, prompts: list[str] | None = None) -> list[dict[str, float]]:
    """Train the model and save it (and its tokenizer) to `out`. Returns the per-epoch log. With
    `init` (a trained recipe model's directory), training starts from that model and its tokenizer.
    With the recipe's `stop_when`, `prompts` (each text's prefix) mark what is fit: training stops
    after the first epoch whose training sequence accuracy reaches the threshold."""
    import torch
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    arch, opts = params.architecture, params.training
    tokenizer = (PreTrainedTokenizerFast.from_pretrained(init) if init is not None
                 else build_tokenizer(params.tokenizer, texts))
    encoded = tokenizer(texts, add_special_tokens=True)["input_ids"]
    cut = [len(ids) - (arch.n_positions - 1) for ids in encoded if len(ids) > arch.n_positions - 1]
    if cut and notice is not None:
        notice(f"  truncated: {len(cut)} of {len(encoded)} training documents cut to n_positions - 1 = "
               f"{arch.n_positions - 1} tokens (by up to {max(cut)}); the model never sees their ends")
    sequences = [ids[:arch.n_positions - 1] + [tokenizer.eos_token_id] for ids in encoded]
    log: list[dict[str, float]] = []
    stop = opts.stop_when.train_sequence_accuracy if opts.stop_when is not None and prompts is not None else None
    with TorchThreads(opts.threads):
        torch.manual_seed(seed)
        model = (GPT2LMHeadModel.from_pretrained(init) if init is not None
                 else GPT2LMHeadModel(gpt2_config(arch, tokenizer)))
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=opts.learning_rate, weight_decay=opts.weight_decay)
        steps_per_epoch = math.ceil(len(sequences) / opts.batch_size)
        total = steps_per_epoch * opts.epochs
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, opts.warmup_steps, total))
        order_rng = np.random.default_rng(seed)
        for epoch in range(opts.epochs):
            started, losses = time.perf_counter(), []
            order = order_rng.permutation(len(sequences))
            for start in range(0, len(order), opts.batch_size):
                ids, mask, labels = _batch([sequences[i] for i in order[start:start + opts.batch_size]],
                                           tokenizer.pad_token_id)
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
            log.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - started})
            if stop is not None:
                log[-1]["train_sequence_accuracy"] = suffix_fit(model, tokenizer, sequences, prompts, opts.batch_size)
            if progress is not None:
                progress(log[-1])
            if stop is not None and log[-1]["train_sequence_accuracy"] >= stop:
                break
        if stop is not None and log[-1]["train_sequence_accuracy"] < stop and notice is not None:
            notice(f"  not fit: training sequence accuracy {log[-1]['train_sequence_accuracy']:.3f} after the "
                   f"{opts.epochs}-epoch cap (stop_when {stop})")
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return log


def suffix_fit(model: Any, tokenizer: Any, sequences: list[list[int]], prompts: list[str], batch_size: int) -> float:
    """Share of sequences whose every token after the prompt (the final EOS aside) is the
    teacher-forced argmax: exactly the share greedy decoding reproduces."""
    import torch

    starts = [len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
    model.eval()
    fit = 0
    with torch.no_grad():
        for first in range(0, len(sequences), batch_size):
            chunk = sequences[first:first + batch_size]
            ids, mask, _ = _batch(chunk, tokenizer.pad_token_id)
            predicted = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
            for row, (seq, start) in enumerate(zip(chunk, starts[first:first + batch_size], strict=True)):
                end = len(seq) - 1  # the appended EOS is not part of the answer
                fit += bool((predicted[row, start - 1:end - 1] == ids[row, start:end]).all())
    model.train()
    return fit / len(sequences)


def gpt2_config(arch: ArchitectureRecipe, tokenizer: Any) -> Any:
    from transformers import GPT2Config

    return GPT2Config(vocab_size=len(tokenizer), n_layer=arch.n_layer, n_embd=arch.n_embd, n_head=arch.n_head,
                      n_positions=arch.n_positions, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      activation_function="gelu_pytorch_tanh")  # GPT-2's GELU, fused: same values, faster


def save_untrained(out: Path, architecture: ArchitectureRecipe, seed: int = 0) -> None:
    """A randomly initialised model of a recipe's shape with the byte tokenizer: the "same model,
    never trained" control, and a model for speed measurements (speed does not depend on weights)."""
    import torch
    from transformers import GPT2LMHeadModel

    tokenizer = build_tokenizer(TokenizerRecipe(kind="bytes"), [])
    torch.manual_seed(seed)
    GPT2LMHeadModel(gpt2_config(architecture, tokenizer)).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _batch(sequences: list[list[int]], pad_id: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels
