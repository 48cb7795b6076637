"""`hf-masked`: a Hugging Face masked LM (AutoModelForMaskedLM) from a local directory.

Its capability is `masked`: tokenize, and for every position of a sequence the rank of the true
token when that one position is masked (one forward row per masked position, counted), plus
mean-pooled features for probes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from memeval.cache import output_key
from memeval.errors import UsageError
from memeval.models.base import AdapterContext, ModelAdapter, drop_whole_text_cache
from memeval.models.hf_causal import NOT_MODEL_FILES, WEIGHT_AND_CONFIG_FILES
from memeval.suite import Strict
from memeval.threads import TorchThreads


class HFMaskedParams(Strict):
    path: str = Field(description="local model directory (relative to the suite)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights' dtype")
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    trust_remote_code: bool = Field(False, description="run the checkpoint's own modelling code")
    batch_size: int = Field(64, ge=1, description="masked sequences per forward pass")
    threads: int | None = Field(1, ge=1, description="torch CPU threads while this model runs")


@dataclass
class ForwardCounter:
    rows: int = 0        # sequences passed through the model (one per masked position)
    batches: int = 0     # forward calls
    cache_hits: int = 0  # sequences whose ranks came from the output cache


class MaskedLM(ModelAdapter):
    """A masked language model: tokenize, rank the true token at masked positions, features."""

    capabilities = frozenset({"masked"})

    def __init__(self, params: Any, context: AdapterContext):
        super().__init__(params, context)
        self.counter = ForwardCounter()  # what `masked_ranks` computed, for methods to report

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def special_mask(self, ids: Sequence[int]) -> list[bool]:
        """True at the special tokens ([CLS], [SEP]...) a method should not score."""
        raise NotImplementedError

    def masked_ranks(self, sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]
                     ) -> list[np.ndarray]:
        """For each sequence and each of its `positions`: the rank (0 = top) of the true token among
        the vocabulary when only that position is masked, i.e. how many tokens score strictly higher."""
        raise NotImplementedError

    def features(self, texts: Sequence[str]) -> np.ndarray:
        """Mean-pooled last hidden states, one row per text."""
        raise NotImplementedError

    def fine_tuned_predictions(self, texts: Sequence[str], labels: np.ndarray, folds: np.ndarray, epochs: int,
                               learning_rate: float, seed: int) -> np.ndarray:
        """Out-of-fold binary predictions: for each fold, a copy of this model fine-tuned as a
        sequence classifier on the other folds predicts that fold."""
        raise NotImplementedError


class HFMasked(MaskedLM):
    name = "hf-masked"
    summary = "Hugging Face masked LM (transformers AutoModelForMaskedLM) from a local directory"
    Params = HFMaskedParams

    def __init__(self, params: HFMaskedParams, context: AdapterContext):
        super().__init__(params, context)
        location = Path(params.path).expanduser()
        location = location if location.is_absolute() else context.base_dir / location
        if not location.is_dir():
            raise UsageError(f"masked LM directory {str(location)!r} does not exist")
        self.location = str(location.resolve())
        self._tokenizer: Any = None
        self._model: Any = None
        self._identity: dict[str, Any] | None = None

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            self._identity = self._own_identity()
        return self._identity

    def _own_identity(self) -> dict[str, Any]:
        root = Path(self.location)
        files = sorted({f for pattern in WEIGHT_AND_CONFIG_FILES for f in root.glob(pattern)
                        if f.is_file() and f.name not in NOT_MODEL_FILES})
        if not files:
            raise UsageError(f"masked LM directory {self.location!r} holds no weights or config files")
        return {"adapter": self.name, "path": self.location, "dtype": self.params.dtype,
                "files_sha256": {f.name: self.context.cache.file_digest(f) for f in files}}

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.location,
                                                                trust_remote_code=self.params.trust_remote_code)
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot load the tokenizer of {self.location!r}: {exc}") from None
            if self._tokenizer.mask_token_id is None:
                raise UsageError(f"the tokenizer of {self.location!r} has no mask token: not a masked LM")
            drop_whole_text_cache(self._tokenizer)
        return self._tokenizer

    @property
    def torch_model(self) -> Any:
        if self._model is None:
            import torch
            from transformers import AutoModelForMaskedLM

            try:
                model = AutoModelForMaskedLM.from_pretrained(self.location, dtype=getattr(torch, self.params.dtype),
                                                             trust_remote_code=self.params.trust_remote_code)
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot load a masked LM from {self.location!r}: {exc}") from None
            self._model = model.to(self.params.device).eval()
        return self._model

    @property
    def max_length(self) -> int | None:
        value = getattr(self.torch_model.config, "max_position_embeddings", None)
        return value if isinstance(value, int) and value > 0 else None

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]

    def special_mask(self, ids: Sequence[int]) -> list[bool]:
        return [bool(m) for m in self.tokenizer.get_special_tokens_mask(list(ids), already_has_special_tokens=True)]

    def masked_ranks(self, sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]
                     ) -> list[np.ndarray]:
        """Ranks from the output cache where it has them (keyed by model, tokens and positions);
        the rest computed, one forward row per masked position, and stored."""
        cache = self.context.cache
        keys = [output_key(self.identity_key, "masked-ranks", {"positions": list(map(int, where))}, ids)
                for ids, where in zip(sequences, positions, strict=True)]
        found = cache.get_many(keys)
        missing = [i for i, key in enumerate(keys) if key not in found]
        cache.require(len(missing), "masked-LM rank lists")
        self.counter.cache_hits += len(keys) - len(missing)
        computed = self._compute_ranks([sequences[i] for i in missing], [positions[i] for i in missing])
        cache.put_many(self.identity_key, "masked-ranks",
                       [(keys[i], ranks.astype(np.int64).tobytes()) for i, ranks in zip(missing, computed, strict=True)])
        fresh = dict(zip(missing, computed, strict=True))
        return [fresh[i] if i in fresh else np.frombuffer(found[keys[i]], dtype=np.int64).copy()
                for i in range(len(keys))]

    def _compute_ranks(self, sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]
                       ) -> list[np.ndarray]:
        rows = [(s, p) for s, where in enumerate(positions) for p in where]
        ranks = np.empty(len(rows), dtype=np.int64)
        for start in range(0, len(rows), self.params.batch_size):
            batch = rows[start:start + self.params.batch_size]
            ranks[start:start + len(batch)] = self._rank_batch([sequences[s] for s, _ in batch],
                                                               [p for _, p in batch])
        out, offset = [], 0
        for where in positions:
            out.append(ranks[offset:offset + len(where)])
            offset += len(where)
        return out

    def _rank_batch(self, sequences: list[Sequence[int]], positions: list[int]) -> np.ndarray:
        import torch

        ids, mask = self._pad(sequences)
        index = torch.arange(len(sequences))
        where = torch.tensor(positions)
        truth = ids[index, where].clone()
        ids[index, where] = self.tokenizer.mask_token_id
        with TorchThreads(self.params.threads), torch.no_grad():
            logits = self.torch_model(input_ids=ids.to(self.params.device),
                                      attention_mask=mask.to(self.params.device)).logits[index, where].float().cpu()
        self.counter.rows += len(sequences)
        self.counter.batches += 1
        return (logits > logits[index, truth][:, None]).sum(dim=1).numpy()

    def features(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        encoded = self.tokenize(texts)
        out = []
        for start in range(0, len(encoded), self.params.batch_size):
            ids, mask = self._pad(encoded[start:start + self.params.batch_size])
            with TorchThreads(self.params.threads), torch.no_grad():
                hidden = self.torch_model(input_ids=ids.to(self.params.device), attention_mask=mask.to(
                    self.params.device), output_hidden_states=True).hidden_states[-1].float().cpu()
            weights = mask[..., None].float()
            out.append(((hidden * weights).sum(1) / weights.sum(1)).numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    def fine_tuned_predictions(self, texts: Sequence[str], labels: np.ndarray, folds: np.ndarray, epochs: int,
                               learning_rate: float, seed: int) -> np.ndarray:
        import torch
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging

        encoded = self.tokenize(texts)
        device = self.params.device
        target = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        predictions = np.zeros(len(encoded), dtype=bool)
        verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
        logging.set_verbosity_error()  # "newly initialized classifier weights" is the point here
        logging.disable_progress_bar()  # one weight-loading bar per fold
        try:
            with TorchThreads(self.params.threads):
                for fold in np.unique(folds):
                    torch.manual_seed(seed * 1000 + int(fold))
                    model = AutoModelForSequenceClassification.from_pretrained(
                        self.location, num_labels=2, trust_remote_code=self.params.trust_remote_code
                    ).to(device)
                    train = np.flatnonzero(folds != fold)
                    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
                    rng = np.random.default_rng([seed, int(fold)])
                    model.train()
                    for _ in range(epochs):
                        order = rng.permutation(train)
                        for start in range(0, order.size, self.params.batch_size):
                            rows = order[start:start + self.params.batch_size]
                            ids, mask = self._pad([encoded[i] for i in rows])
                            loss = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                         labels=target[rows].to(device)).loss
                            optimizer.zero_grad(set_to_none=True)
                            loss.backward()
                            optimizer.step()
                    model.eval()
                    test = np.flatnonzero(folds == fold)
                    with torch.no_grad():
                        ids, mask = self._pad([encoded[i] for i in test])
                        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                        predictions[test] = logits.argmax(-1).cpu().numpy() == 1
        finally:
            logging.set_verbosity(verbosity)
            if bars:
                logging.enable_progress_bar()
        return predictions

    def _pad(self, sequences: Sequence[Sequence[int]]) -> tuple[Any, Any]:
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(sequences):
            ids[row, :len(seq)] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, :len(seq)] = 1
        return ids, mask
