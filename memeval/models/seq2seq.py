"""`seq2seq`: a small encoder–decoder transformer memeval trains itself on a suite dataset of
prompt -> target pairs (prefix -> suffix), until it fits (see `memeval.train.seq2seq`).

Trained once, stored under the cache directory by the hash of architecture + training + data +
seed, with its per-epoch log (loss, training fit, accuracy on the `monitor` datasets).
It decodes greedily (`greedy_text`) and exposes every layer's output (`layer_outputs`).
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from memeval.data import Sample, fingerprint
from memeval.errors import UsageError
from memeval.files import build_once
from memeval.models.base import AdapterContext, ModelAdapter
from memeval.suite import Strict
from memeval.threads import TorchThreads
from memeval.train.seq2seq import (
    EncoderDecoder,
    Pairs,
    Seq2SeqArchitecture,
    Seq2SeqTraining,
    Vocabulary,
    greedy,
    parameter_count,
    shift_right,
    train,
)

SEQ2SEQ_FORMAT = 1  # bump when training changes in a way that should retrain cached models


class Seq2SeqParams(Strict):
    dataset: str = Field(
        description="suite dataset of prompt -> target pairs to train on (prefix_field and "
        "suffix_field set)"
    )
    monitor: list[str] = Field(
        default_factory=list,
        description="datasets whose sequence and token accuracy (teacher-forced) are logged every epoch "
        "(e.g. the held-out pairs)",
    )
    architecture: Seq2SeqArchitecture = Field(
        default_factory=Seq2SeqArchitecture,
        description=(
            "d_model, n_head, encoder_layers, decoder_layers, d_ff (default Maltoni & Ferrara's 64, 8, 6, 6, 256)"
        ),
    )
    training: Seq2SeqTraining = Field(
        default_factory=Seq2SeqTraining,
        description=(
            "max_epochs, stop_when {train_sequence_accuracy}, batch_size, learning_rate, weight_decay"
        ),
    )
    threads: int = Field(
        1,
        ge=1,
        description="torch threads (part of the hash: another count can give other weights)",
    )


def pairs_of(samples: list[Sample], name: str) -> tuple[list[str], list[str]]:
    """The prompts and targets of a dataset (its prefix and suffix fields)."""
    if any(s.prefix is None or not s.suffix for s in samples):
        raise UsageError(
            f"dataset {name!r} needs prompt -> target pairs: set its prefix_field and suffix_field "
            f"(every target non-empty)"
        )
    return [s.prefix or "" for s in samples], [s.suffix or "" for s in samples]


class Seq2Seq(ModelAdapter):
    name = "seq2seq"
    summary = (
        "an encoder-decoder transformer trained by memeval on prompt -> target pairs until it fits "
        "(stop on fit), cached by recipe + data hash; greedy decoding and every layer's output"
    )
    Params = Seq2SeqParams
    capabilities = frozenset({"transduce", "train"})

    def __init__(self, params: Seq2SeqParams, context: AdapterContext):
        super().__init__(params, context)
        self.directory = trained_seq2seq_dir(params, context)

    @classmethod
    def dataset_refs(cls, params: BaseModel) -> list[tuple[str, str]]:
        p: Seq2SeqParams = params  # type: ignore[assignment]
        return [("dataset", p.dataset), *(("monitor", name) for name in p.monitor)]

    def identity(self) -> dict[str, Any]:
        return {"adapter": self.name, "recipe": self.summary_info["key"]}

    def details(self) -> dict[str, Any]:
        info = self.summary_info
        return {
            "training": {
                k: info[k] for k in ("parameters", "epochs", "fit_epoch", "seconds", "pairs")
            }
        }

    @cached_property
    def summary_info(self) -> dict[str, Any]:
        return json.loads((self.directory / "summary.json").read_text())

    @property
    def training_log(self) -> list[dict[str, Any]]:
        """Per epoch: loss, train_sequence_accuracy, train_token_accuracy, monitored {name: accuracies}."""
        return list(self.summary_info["log"])

    @property
    def fit_epoch(self) -> int | None:
        return self.summary_info["fit_epoch"]

    @cached_property
    def network(self) -> Any:
        import torch

        info = self.summary_info
        model = EncoderDecoder(
            Seq2SeqArchitecture.model_validate(info["architecture"]),
            len(self.vocabulary),
            info["max_len"],
        )
        model.load_state_dict(torch.load(self.directory / "weights.pt", weights_only=True))
        return model.eval()

    @cached_property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary(self.summary_info["vocabulary"])

    def greedy_text(self, prompts: list[str], length: int, batch_size: int = 1024) -> list[str]:
        """`length` characters decoded greedily after each prompt."""
        model, out = self.network, []
        with TorchThreads(self.params.threads):
            for start in range(0, len(prompts), batch_size):
                ids = greedy(
                    model, self.vocabulary.encode(prompts[start : start + batch_size]), length
                )
                out.extend(self.vocabulary.decode(row.tolist()) for row in ids)
        return out

    def layer_outputs(self, prompts: list[str], targets: list[str]) -> list[tuple[str, np.ndarray]]:
        """(layer name, [pairs, positions x width]) for the embedded input, each encoder block and
        each decoder block, the decoder teacher-forced on `targets`."""
        import torch

        model = self.network
        with TorchThreads(self.params.threads), torch.no_grad():
            source = self.vocabulary.encode(prompts)
            encoded = model.encode(source)
            decoded = model.decode(
                encoded[-1], source, shift_right(self.vocabulary.encode(targets))
            )
        names = [
            "embedding",
            *(f"encoder {i}" for i in range(1, len(encoded))),
            *(f"decoder {i}" for i in range(1, len(decoded) + 1)),
        ]
        return [
            (name, x.reshape(x.shape[0], -1).numpy().astype(np.float64))
            for name, x in zip(names, [*encoded, *decoded], strict=True)
        ]


def seq2seq_hash(
    params: Seq2SeqParams,
    arch: Seq2SeqArchitecture,
    training: Seq2SeqTraining,
    data: list[str],
    seed: int,
) -> str:
    import torch

    shaped = {
        "architecture": arch.model_dump(),
        "training": training.model_dump(),
        "data": data,
        "seed": seed,
        "threads": params.threads,
        "torch": torch.__version__.split("+")[0],
    }
    blob = json.dumps([SEQ2SEQ_FORMAT, shaped], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def trained_seq2seq_dir(params: Seq2SeqParams, context: AdapterContext) -> Path:
    """The directory of the trained model, training it first when no cache holds it."""
    arch, training = params.architecture, params.training
    train_samples = context.load_dataset(params.dataset)
    monitored = {name: context.load_dataset(name) for name in params.monitor}
    key = seq2seq_hash(
        params,
        arch,
        training,
        [fingerprint(train_samples), *map(fingerprint, monitored.values()), *params.monitor],
        context.seed,
    )
    final = context.cache_dir / "seq2seq" / key

    def build(work: Path) -> None:
        context.log(
            f"training seq2seq model {key} on {len(train_samples)} pairs "
            f"(until fit, at most {training.max_epochs} epochs)"
        )
        _train_into(work, key, arch, training, params, train_samples, monitored, context)

    build_once(final, build, context.log, lambda: context.cache.require(1, f"trained seq2seq model {key}"))
    return final


def _train_into(
    work: Path,
    key: str,
    arch: Seq2SeqArchitecture,
    training: Seq2SeqTraining,
    params: Seq2SeqParams,
    train_samples: list[Sample],
    monitored: dict[str, list[Sample]],
    context: AdapterContext,
) -> None:
    import torch

    prompts, targets = pairs_of(train_samples, params.dataset)
    watched = {name: pairs_of(samples, name) for name, samples in monitored.items()}
    vocab = Vocabulary.of([*prompts, *targets, *(t for p, q in watched.values() for t in (*p, *q))])

    def progress(entry: dict[str, Any]) -> None:
        context.log(
            f"  epoch {entry['epoch']}: loss {entry['loss']:.4f}, training fit "
            f"{entry['train_sequence_accuracy']:.3f} ({entry['seconds']:.1f} s)"
        )

    model, log = train(
        arch,
        training,
        vocab,
        Pairs.of(vocab, prompts, targets),
        {name: Pairs.of(vocab, *pair) for name, pair in watched.items()},
        context.seed,
        threads=params.threads,
        progress=progress,
    )
    if log.fit_epoch is None:
        context.log(
            f"  seq2seq model {key} did not fit its training set in {training.max_epochs} epochs "
            f"(last fit {log.epochs[-1]['train_sequence_accuracy']:.3f})"
        )
    torch.save(model.state_dict(), work / "weights.pt")
    summary = {
        "key": key,
        "architecture": arch.model_dump(),
        "training": training.model_dump(),
        "vocabulary": vocab.tokens[2:],
        "max_len": model.source_positions.num_embeddings,
        "seed": context.seed,
        "pairs": len(prompts),
        "parameters": parameter_count(model),
        "epochs": len(log.epochs),
        "fit_epoch": log.fit_epoch,
        "seconds": round(sum(e["seconds"] for e in log.epochs), 2),
        "log": log.epochs,
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
