"""`openai-compat`: a causal LM served behind an OpenAI-compatible completions endpoint (vLLM, TGI,
llama.cpp server, ...).

Prompts travel as token ids (the completions API accepts them), so a served model scores and
continues exactly the tokens an in-process one would. Prompt log-probs come from `echo` +
`logprobs`; generated tokens come back as ids through vLLM's `return_tokens_as_token_ids`. The API
key is read from an environment variable at request time and never stored: the params hold only
the variable's name.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from memeval.errors import UsageError
from memeval.models.base import AdapterContext, CausalLM, TokenScores, drop_whole_text_cache
from memeval.suite import Strict

RETRIED_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
TOKEN_ID_PREFIX = "token_id:"  # vLLM's spelling of a token under return_tokens_as_token_ids


class OpenAICompatParams(Strict):
    base_url: str = Field(description="the server's API root, e.g. http://localhost:8000/v1")
    model: str = Field(description="the model name the server knows (its /v1/models id)")
    api_key_env: str | None = Field(None, description="environment variable holding the API key (read at request "
                                                      "time, never written anywhere); none: no key sent")
    tokenizer: str | None = Field(None, description="the served model's tokenizer: a local directory (relative to "
                                                    "the suite) or hub id; token-level methods on text need it")
    add_special_tokens: bool = Field(True, description="let the tokenizer add BOS/EOS as it does")
    batch_size: int = Field(16, ge=1, description="prompts per request")
    concurrency: int = Field(4, ge=1, description="requests in flight at once")
    timeout: float = Field(60.0, gt=0, description="seconds before one request is abandoned (and retried)")
    max_retries: int = Field(5, ge=0, description="retries of a request that timed out or got 429 / 5xx")
    backoff: float = Field(0.5, ge=0, description="seconds before the first retry; doubles with each retry")
    top_logprobs: int = Field(2, ge=2, description="top log-probs asked per position (2: argmax and the "
                                                   "top-1/top-2 margin)")


class ServerError(UsageError):
    """The server refused or failed a request for good (after its retries)."""


class OpenAICompat(CausalLM):
    name = "openai-compat"
    summary = "a causal LM behind an OpenAI-compatible completions server (vLLM, TGI, llama.cpp), by token ids"
    Params = OpenAICompatParams

    def __init__(self, params: OpenAICompatParams, context: AdapterContext):
        super().__init__(params, context)
        self.base_url = params.base_url.rstrip("/")
        self._local = threading.local()
        if params.api_key_env and not os.environ.get(params.api_key_env):
            raise UsageError(f"api_key_env: environment variable {params.api_key_env!r} is not set")

    # -- identity ---------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """Base URL + model name + what the server says of the model's revision: two servers of the
        same weights under other names are other models to the cache (it cannot know better)."""
        entry = self._model_entry
        revision = entry.get("revision") or entry.get("root") or None
        return {"adapter": self.name, "base_url": self.base_url, "model": self.params.model, "revision": revision}

    def details(self) -> dict[str, Any]:
        return {"tokenizer": self.params.tokenizer or "none named: text cannot be tokenized locally"}

    @cached_property
    def _model_entry(self) -> dict[str, Any]:
        listed = self._request("GET", "/models", None).get("data") or []
        for entry in listed:
            if entry.get("id") == self.params.model:
                return entry
        names = ", ".join(repr(e.get("id")) for e in listed) or "none"
        raise UsageError(f"model: server {self.base_url} does not serve {self.params.model!r} (it serves {names})")

    @cached_property
    def context_length(self) -> int | None:
        value = self._model_entry.get("max_model_len")
        return value if isinstance(value, int) and value > 0 else None

    # -- tokenizer --------------------------------------------------------------------------

    @cached_property
    def tokenizer(self) -> Any:
        if self.params.tokenizer is None:
            raise UsageError(f"model {self.params.model!r} (openai-compat) names no tokenizer, and this method "
                             f"tokenizes text: set the model's `tokenizer:` to its tokenizer (a local directory or "
                             f"hub id), or give the dataset as token ids")
        from transformers import AutoTokenizer

        location = Path(self.params.tokenizer).expanduser()
        if not location.is_absolute() and (self.context.base_dir / location).exists():
            location = self.context.base_dir / location
        source = str(location) if location.exists() else self.params.tokenizer
        try:
            tok = AutoTokenizer.from_pretrained(source)
        except OSError as exc:
            raise UsageError(f"tokenizer: cannot load {self.params.tokenizer!r}: {exc}") from None
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        return drop_whole_text_cache(tok)

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool | None = None) -> list[list[int]]:
        special = self.params.add_special_tokens if add_special_tokens is None else add_special_tokens
        return self.tokenizer(list(texts), add_special_tokens=special)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    # -- capabilities -----------------------------------------------------------------------

    def score(self, sequences: Sequence[Sequence[int]]) -> list[TokenScores]:
        """Teacher-forced log-probs through `echo` + `logprobs` (one token generated and dropped: vLLM
        refuses `max_tokens: 0`). The server gives
        the top log-probs only: the argmax and the top-1/top-2 margin are exact; the mean and std of
        log p over the whole vocabulary (Min-K%++) are unknown and stored as NaN."""
        if any(len(s) < 2 for s in sequences):
            raise ValueError("scoring needs sequences of at least 2 tokens")
        bodies = [{"prompt": [list(map(int, s)) for s in chunk], "max_tokens": 1, "echo": True,
                   "logprobs": self.params.top_logprobs, "temperature": 0.0, "return_tokens_as_token_ids": True}
                  for chunk in self._chunks(sequences)]
        choices = [c for reply in self._post_all(bodies) for c in reply]
        return [self._token_scores(seq, choice) for seq, choice in zip(sequences, choices, strict=True)]

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int = 0, stop_at_eos: bool = False, sample_indices: Sequence[int] | None = None,
                 temperature_decay: tuple[float, int] | None = None) -> list[list[int]]:
        """Greedy generation of exactly `max_new_tokens` tokens (vLLM's `ignore_eos`) unless `stop_at_eos`."""
        if do_sample:
            raise UsageError("openai-compat: sampled generation is not supported (a server's sampler cannot be "
                             "seeded per sample, so a sample could not be replayed); use greedy methods")
        bodies = [{"prompt": [list(map(int, p)) for p in chunk], "max_tokens": max_new_tokens, "temperature": 0.0,
                   "logprobs": 1, "ignore_eos": not stop_at_eos,
                   "return_tokens_as_token_ids": True}
                  for chunk in self._chunks(prompts)]
        choices = [c for reply in self._post_all(bodies) for c in reply]
        return [self._token_ids(choice, "greedy generation")[:max_new_tokens] for choice in choices]

    def sampler_logprobs(self, sequences: Sequence[Sequence[int]], temperature: float = 1.0,
                         top_k: int | None = None, top_p: float | None = None) -> list[np.ndarray]:
        raise UsageError("openai-compat: the sampler's log-probs need the full next-token distribution, which "
                         "a completions server does not return; this method cannot run against a served model")

    # -- the wire ---------------------------------------------------------------------------

    def _chunks(self, items: Sequence[Any]) -> list[Sequence[Any]]:
        size = self.params.batch_size
        return [items[i:i + size] for i in range(0, len(items), size)]

    def _post_all(self, bodies: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """Each body's choices in prompt order; at most `concurrency` requests in flight."""
        def one(body: dict[str, Any]) -> list[dict[str, Any]]:
            reply = self._request("POST", "/completions", {"model": self.params.model, **body})
            choices = sorted(reply.get("choices") or [], key=lambda c: c.get("index", 0))
            if len(choices) != len(body["prompt"]):
                raise UsageError(f"server {self.base_url} answered {len(choices)} choices for "
                                 f"{len(body['prompt'])} prompts")
            return choices

        if len(bodies) == 1:
            return [one(bodies[0])]
        with ThreadPoolExecutor(max_workers=min(self.params.concurrency, len(bodies))) as pool:
            return list(pool.map(one, bodies))

    @property
    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import httpx

            client = self._local.client = httpx.Client(timeout=self.params.timeout)
        return client

    def _headers(self) -> dict[str, str]:
        if not self.params.api_key_env:
            return {}
        return {"Authorization": f"Bearer {os.environ.get(self.params.api_key_env, '')}"}

    def _request(self, verb: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        """One request, retried with exponential backoff on timeouts, connection errors, 429 and 5xx
        (a `Retry-After` the server sends is honoured)."""
        import httpx

        url = self.base_url + path
        problem = ""
        for attempt in range(self.params.max_retries + 1):
            wait = self.params.backoff * 2 ** attempt
            try:
                response = self._client.request(verb, url, json=body, headers=self._headers())
            except httpx.TimeoutException:
                problem = f"no answer within the timeout of {self.params.timeout:g} s"
            except httpx.TransportError as exc:
                problem = f"cannot connect ({type(exc).__name__}: {exc})"
            else:
                if response.status_code < 400:
                    return response.json()
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in RETRIED_STATUS:
                    break
                wait = max(wait, _retry_after(response))
            if attempt < self.params.max_retries:
                time.sleep(wait)
        tries = attempt + 1
        raise ServerError(f"openai-compat server {url}: {problem} ({tries} attempt{'s' if tries > 1 else ''})")

    # -- reading replies --------------------------------------------------------------------

    def _logprobs(self, choice: dict[str, Any], what: str) -> dict[str, Any]:
        logprobs = choice.get("logprobs")
        if not logprobs or logprobs.get("token_logprobs") is None:
            raise UsageError(f"openai-compat server {self.base_url} returned no log-probs ({what} needs the "
                             f"'logprobs' capability: a completions endpoint that honours `logprobs`"
                             f"{' and `echo`' if what == 'prompt scoring' else ''})")
        return logprobs

    def _token_ids(self, choice: dict[str, Any], what: str) -> list[int]:
        tokens = self._logprobs(choice, what)["tokens"]
        if tokens and not all(isinstance(t, str) and t.startswith(TOKEN_ID_PREFIX) for t in tokens):
            raise UsageError(f"openai-compat server {self.base_url} returns tokens as text, not ids ({what} needs "
                             f"token ids: vLLM's `--return-tokens-as-token-ids` / `return_tokens_as_token_ids`)")
        return [int(t[len(TOKEN_ID_PREFIX):]) for t in tokens]

    def _token_scores(self, sequence: Sequence[int], choice: dict[str, Any]) -> TokenScores:
        logprobs = self._logprobs(choice, "prompt scoring")
        n = len(sequence)
        values = logprobs["token_logprobs"][1:n]
        tops = (logprobs.get("top_logprobs") or [])[1:n]
        if len(values) != n - 1 or len(tops) != n - 1 or any(v is None for v in values):
            raise UsageError(f"openai-compat server {self.base_url} did not echo the prompt's log-probs (prompt "
                             f"scoring needs `echo` with `logprobs`)")
        argmax, margin = [], []
        for top in tops:
            ranked = sorted(top.items(), key=lambda kv: kv[1], reverse=True)
            if len(ranked) < 2 or not ranked[0][0].startswith(TOKEN_ID_PREFIX):
                raise UsageError(f"openai-compat server {self.base_url} gave fewer than 2 top log-probs per "
                                 f"position, or tokens as text (prompt scoring needs token ids and the top 2)")
            argmax.append(int(ranked[0][0][len(TOKEN_ID_PREFIX):]))
            margin.append(ranked[0][1] - ranked[1][1])
        unknown = np.full(n - 1, np.nan, dtype=np.float32)
        return TokenScores(logprob=np.asarray(values, dtype=np.float32), argmax=np.asarray(argmax, dtype=np.int64),
                           margin=np.asarray(margin, dtype=np.float32), mean_logprob=unknown, std_logprob=unknown)


def _retry_after(response: Any) -> float:
    try:
        return min(60.0, float(response.headers.get("retry-after", 0)))
    except ValueError:
        return 0.0
