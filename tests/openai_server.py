"""A real OpenAI-compatible completions server (FastAPI + uvicorn on loopback) in front of an
in-process `hf-causal` model, speaking vLLM's dialect: prompts as token ids, `echo` + `logprobs`,
`return_tokens_as_token_ids`, `ignore_eos`, `max_model_len` in /v1/models. Faults can be planted:
the first N completions fail with a status, every completion sleeps, or log-probs are withheld."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from fastapi import Body, FastAPI, Header
from fastapi.responses import JSONResponse


@dataclass
class Faults:
    fail_first: int = 0  # completions answered with `status` before the server starts answering
    status: int = 503
    delay: float = 0.0  # seconds every completion sleeps before answering
    no_logprobs: bool = False  # answer as a server that does not return log-probs
    seen: int = 0  # completions received (failed ones included)
    inflight: int = 0
    peak: int = 0  # the most completions in flight at once
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_app(model: Any, name: str, revision: str, faults: Faults | None = None, api_key: str | None = None) -> FastAPI:
    """`model`: an HFCausal adapter (its torch model and tokenizer do the work)."""
    faults = faults or Faults()
    app = FastAPI()
    lock = threading.Lock()

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "root": model.location,
                                             "revision": revision, "max_model_len": model.context_length}]}

    @app.post("/v1/completions")
    def completions(body: Annotated[dict[str, Any], Body()],
                    authorization: Annotated[str | None, Header()] = None) -> Any:
        # A plain def: FastAPI runs it in a worker thread, so a slow answer does not stall the others.
        with faults.lock:
            faults.seen += 1
            faults.inflight += 1
            faults.peak = max(faults.peak, faults.inflight)
            failing = faults.seen <= faults.fail_first
        try:
            if api_key is not None and authorization != f"Bearer {api_key}":
                return JSONResponse({"error": "bad key"}, status_code=401)
            if failing:
                return JSONResponse({"error": "planted failure"}, status_code=faults.status)
            if faults.delay:
                time.sleep(faults.delay)
            with lock:
                choices = _complete(model, body, faults.no_logprobs)
            return {"object": "text_completion", "model": name, "choices": choices}
        finally:
            with faults.lock:
                faults.inflight -= 1

    return app


def _complete(model: Any, body: dict[str, Any], no_logprobs: bool) -> list[dict[str, Any]]:
    prompts = body["prompt"]
    if prompts and isinstance(prompts[0], int):
        prompts = [prompts]
    max_tokens = int(body.get("max_tokens", 16))
    generated = model.generate(prompts, max_tokens, stop_at_eos=not body.get("ignore_eos", False)) if max_tokens \
        else [[] for _ in prompts]
    full = [list(p) + list(g) for p, g in zip(prompts, generated, strict=True)]
    k = body.get("logprobs")
    rows = _top_logprobs(model, full, int(k)) if k is not None and not no_logprobs else None
    as_ids = body.get("return_tokens_as_token_ids", False)
    choices = []
    for index, (prompt, gen, seq) in enumerate(zip(prompts, generated, full, strict=True)):
        start = 0 if body.get("echo") else len(prompt)
        tokens = seq[start:]
        spell = (lambda t: f"token_id:{t}") if as_ids else (lambda t: model.decode([t]))
        logprobs = None
        if rows is not None:
            chosen, tops = rows[index]
            logprobs = {"tokens": [spell(t) for t in tokens],
                        "token_logprobs": ([None] + chosen)[start:],
                        "top_logprobs": ([None] + [{spell(t): v for t, v in top} for top in tops])[start:],
                        "text_offset": list(range(len(tokens)))}
        choices.append({"index": index, "text": model.decode(gen), "logprobs": logprobs, "finish_reason": "length"})
    return choices


def _top_logprobs(model: Any, sequences: list[list[int]], k: int) -> list[tuple[list[float], list[list]]]:
    """Per sequence: the log-prob of each token after the first, and the top-k (token, log-prob)
    at each of those positions, from one padded forward pass per batch (the adapter's own)."""

    def per_batch(states: Any, head: Any, targets: Any, lengths: list[int]) -> list[Any]:
        logprobs = torch.log_softmax(head(states).float(), dim=-1)
        chosen = logprobs.gather(-1, targets[..., None])[..., 0]
        top = logprobs.topk(k, dim=-1)
        out = []
        for row, n in enumerate(lengths):
            values, indices = top.values[row, :n - 1].tolist(), top.indices[row, :n - 1].tolist()
            out.append((chosen[row, :n - 1].tolist(),
                        [list(zip(i, v, strict=True)) for i, v in zip(indices, values, strict=True)]))
        return out

    return model._forward(sequences, per_batch)


class Served:
    """uvicorn serving `app` on 127.0.0.1 (a free port) in a thread, until `stop()`."""

    def __init__(self, app: FastAPI):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
