"""A small encoder–decoder transformer trained on prompt -> target character pairs with teacher
forcing, until it fits its training set (Maltoni & Ferrara 2024's arithmetic model: d_model 64,
8 heads, 6+6 layers, d_ff 256).

One token per character. Training stops when the training set's sequence accuracy (every target
token right, teacher-forced: that is exactly greedy decoding's sequence accuracy, in one pass)
reaches the `stop_when` threshold, or at `max_epochs` (then the log says it never fit). Each
epoch the log keeps the loss, and for the training set and each monitored set the sequence
accuracy and the teacher-forced token accuracy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from memeval.suite import Strict
from memeval.threads import TorchThreads

PAD, BOS = "<pad>", "<s>"


class Seq2SeqArchitecture(Strict):
    d_model: int = Field(64, ge=8, description="width")
    n_head: int = Field(8, ge=1, description="attention heads (divides d_model)")
    encoder_layers: int = Field(6, ge=1, description="encoder blocks")
    decoder_layers: int = Field(6, ge=1, description="decoder blocks")
    d_ff: int = Field(256, ge=8, description="feed-forward width")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> Seq2SeqArchitecture:
        if self.d_model % self.n_head:
            raise ValueError(
                f"d_model ({self.d_model}) must be a multiple of n_head ({self.n_head})"
            )
        return self


class StopWhen(Strict):
    train_sequence_accuracy: float = Field(
        0.999, gt=0, le=1, description="stop once this share of the training set is fit exactly"
    )


class Seq2SeqTraining(Strict):
    max_epochs: int = Field(
        100,
        ge=1,
        description="cap on passes over the training set; reaching it without fitting is reported",
    )
    stop_when: StopWhen = Field(default_factory=StopWhen, description="the stop-on-fit rule")
    batch_size: int = Field(64, ge=1, description="pairs per step")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float | None = Field(
        1.0, gt=0, description="clip the gradient norm to this (none: no clipping)"
    )


class Vocabulary:
    """Characters <-> ids; ids 0 and 1 are padding and the decoder's start token."""

    def __init__(self, chars: Sequence[str]):
        self.tokens = [PAD, BOS, *sorted(set(chars) - {PAD, BOS})]
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def of(cls, texts: Sequence[str]) -> Vocabulary:
        return cls(sorted({c for text in texts for c in text}))

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Right-padded ids; an unknown character is a ValueError naming it."""
        width = max(len(t) for t in texts)
        ids = torch.zeros((len(texts), width), dtype=torch.long)
        for row, text in enumerate(texts):
            try:
                ids[row, : len(text)] = torch.tensor(
                    [self.index[c] for c in text], dtype=torch.long
                )
            except KeyError as exc:
                raise ValueError(
                    f"character {exc.args[0]!r} of {text!r} is not in the vocabulary"
                ) from None
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.tokens[i] for i in ids if i > 1)

    def __len__(self) -> int:
        return len(self.tokens)


class EncoderDecoder(nn.Module):
    """Token + learned position embeddings, post-norm transformer blocks, a linear head."""

    def __init__(self, arch: Seq2SeqArchitecture, vocab_size: int, max_len: int):
        super().__init__()
        d = arch.d_model
        self.embed = nn.Embedding(vocab_size, d, padding_idx=0)
        self.source_positions = nn.Embedding(max_len, d)
        self.target_positions = nn.Embedding(max_len, d)
        self.encoder = nn.ModuleList(
            nn.TransformerEncoderLayer(d, arch.n_head, arch.d_ff, dropout=0.0, batch_first=True)
            for _ in range(arch.encoder_layers)
        )
        self.decoder = nn.ModuleList(
            nn.TransformerDecoderLayer(d, arch.n_head, arch.d_ff, dropout=0.0, batch_first=True)
            for _ in range(arch.decoder_layers)
        )
        self.head = nn.Linear(d, vocab_size)

    def encode(self, source: torch.Tensor) -> list[torch.Tensor]:
        """The embedded input, then each encoder block's output."""
        pad = source == 0
        x = self.embed(source) + self.source_positions(torch.arange(source.shape[1]))
        outputs = [x]
        for layer in self.encoder:
            x = layer(x, src_key_padding_mask=pad)
            outputs.append(x)
        return outputs

    def decode(
        self, memory: torch.Tensor, source: torch.Tensor, target_in: torch.Tensor
    ) -> list[torch.Tensor]:
        """Each decoder block's output for the (shifted) target, causally masked."""
        width = target_in.shape[1]
        causal = torch.triu(torch.full((width, width), float("-inf")), diagonal=1)
        y = self.embed(target_in) + self.target_positions(torch.arange(width))
        outputs = []
        for layer in self.decoder:
            y = layer(y, memory, tgt_mask=causal, memory_key_padding_mask=source == 0)
            outputs.append(y)
        return outputs

    def forward(self, source: torch.Tensor, target_in: torch.Tensor) -> torch.Tensor:
        memory = self.encode(source)[-1]
        return self.head(self.decode(memory, source, target_in)[-1])


def shift_right(target: torch.Tensor) -> torch.Tensor:
    start = torch.ones((target.shape[0], 1), dtype=torch.long)
    return torch.cat([start, target[:, :-1]], dim=1)


@torch.no_grad()
def greedy(model: EncoderDecoder, source: torch.Tensor, length: int) -> torch.Tensor:
    """`length` tokens decoded greedily (argmax at each step, fed back)."""
    memory = model.encode(source)[-1]
    out = torch.ones((source.shape[0], 1), dtype=torch.long)
    for _ in range(length):
        logits = model.head(model.decode(memory, source, out)[-1][:, -1])
        logits[:, :2] = float("-inf")  # never padding or the start token
        out = torch.cat([out, logits.argmax(-1, keepdim=True)], dim=1)
    return out[:, 1:]


@torch.no_grad()
def teacher_forced_correct(
    model: EncoderDecoder, source: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Per pair, how many target tokens the teacher-forced argmax gets right (padding excluded)."""
    predicted = model(source, shift_right(target)).argmax(-1)
    return ((predicted == target) & (target != 0)).sum(dim=1)


@dataclass
class Pairs:
    source: torch.Tensor
    target: torch.Tensor

    @classmethod
    def of(cls, vocab: Vocabulary, prompts: Sequence[str], targets: Sequence[str]) -> Pairs:
        return cls(vocab.encode(prompts), vocab.encode(targets))

    def __len__(self) -> int:
        return int(self.source.shape[0])


@dataclass
class Seq2SeqLog:
    """Per epoch: loss, training fit, and the accuracy of each monitored set (see `fit_of`)."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    fit_epoch: int | None = None  # the epoch the stop rule fired; None: max_epochs reached unfit


def train(
    arch: Seq2SeqArchitecture,
    opts: Seq2SeqTraining,
    vocab: Vocabulary,
    train_pairs: Pairs,
    monitored: dict[str, Pairs],
    seed: int,
    threads: int = 1,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[EncoderDecoder, Seq2SeqLog]:
    """Train until the stop rule fires or `max_epochs`; returns the model (eval mode) and the log."""
    max_len = max(
        train_pairs.source.shape[1],
        train_pairs.target.shape[1],
        *(max(p.source.shape[1], p.target.shape[1]) for p in monitored.values()),
    )
    log = Seq2SeqLog()
    with TorchThreads(threads):
        torch.manual_seed(seed)
        model = EncoderDecoder(arch, len(vocab), max_len)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=opts.learning_rate, weight_decay=opts.weight_decay
        )
        loss_fn = nn.CrossEntropyLoss(ignore_index=0)
        order_rng = np.random.default_rng(seed)
        for epoch in range(1, opts.max_epochs + 1):
            started, losses = time.perf_counter(), []
            model.train()
            order = torch.from_numpy(order_rng.permutation(len(train_pairs)))
            for start in range(0, len(order), opts.batch_size):
                chosen = order[start : start + opts.batch_size]
                source, target = train_pairs.source[chosen], train_pairs.target[chosen]
                logits = model(source, shift_right(target))
                loss = loss_fn(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if opts.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
                optimizer.step()
                losses.append(loss.item())
            model.eval()
            fit = fit_of(model, train_pairs)
            entry = {
                "epoch": epoch,
                "loss": float(np.mean(losses)),
                "train_sequence_accuracy": fit["sequence_accuracy"],
                "train_token_accuracy": fit["token_accuracy"],
                "monitored": {name: fit_of(model, pairs) for name, pairs in monitored.items()},
            }
            entry["seconds"] = time.perf_counter() - started
            log.epochs.append(entry)
            if progress is not None:
                progress(entry)
            if entry["train_sequence_accuracy"] >= opts.stop_when.train_sequence_accuracy:
                log.fit_epoch = epoch
                break
    return model, log


def fit_of(model: EncoderDecoder, pairs: Pairs, batch_size: int = 2048) -> dict[str, float]:
    """Teacher-forced accuracy: `sequence_accuracy` (every target token the argmax, which is
    exactly greedy decoding's sequence accuracy) and `token_accuracy` (share of target tokens)."""
    right = torch.cat(
        [
            teacher_forced_correct(
                model, pairs.source[s : s + batch_size], pairs.target[s : s + batch_size]
            )
            for s in range(0, len(pairs), batch_size)
        ]
    )
    lengths = (pairs.target != 0).sum(dim=1)
    return {
        "sequence_accuracy": float((right == lengths).float().mean()),
        "token_accuracy": float(right.sum() / lengths.sum()),
    }


def parameter_count(model: nn.Module) -> int:
    return int(sum(math.prod(p.shape) for p in model.parameters()))
