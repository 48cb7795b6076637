"""Per-position next-token statistics of a causal LM, the LM head applied to the final hidden
states a chunk of positions at a time: no [batch, length, vocab] tensor (nor its log-softmax) is
ever formed, and padding positions are never projected."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

# Logits formed at once (16 MB in float32; the log-softmax and the mean/std take a few times that):
# SmolLM2's 49,152-token vocabulary gets 85 positions per chunk, a byte tokenizer's 258 gets 16,000.
CHUNK_ELEMENTS = 1 << 22

ALL_STATS = ("logprob", "argmax", "margin", "mean_logprob", "std_logprob")


def split_head(model: Any) -> tuple[Any, Any] | None:
    """(body, head) such that head(body(...).last_hidden_state) are the model's logits, checked on a
    probe; None when the model does something else to its logits (a soft cap, a scale...)."""
    import torch

    body, head = getattr(model, "base_model", None), model.get_output_embeddings()
    if body is None or body is model or head is None:
        return None
    size = model.get_input_embeddings().num_embeddings
    probe = (torch.arange(4) % size)[None].to(model.device)
    with torch.inference_mode():
        try:
            split = head(body(input_ids=probe).last_hidden_state).float()
        except (TypeError, AttributeError):
            return None
        whole = model(input_ids=probe).logits.float()
    if split.shape != whole.shape or not torch.allclose(split, whole, rtol=1e-4, atol=1e-4):
        return None
    return body, head


def position_stats(states: Any, head: Any, targets: Any, stats: Collection[str] = ALL_STATS) -> dict[str, Any]:
    """`stats` of next-token prediction at each of N positions: `states` [N, H] final hidden
    states (or [N, V] logits with `head` the identity), `targets` [N] the true next tokens.
    Returns [N] tensors on the CPU: log p(target), argmax, top-1 minus top-2 log-prob, and the mean
    and standard deviation of log p(z) under the model's next-token distribution."""
    import torch

    vocab = head.out_features if hasattr(head, "out_features") else states.shape[-1]
    step = max(1, CHUNK_ELEMENTS // max(1, vocab))
    parts: dict[str, list[Any]] = {name: [] for name in stats}
    with torch.inference_mode():
        for start in range(0, states.shape[0], step):
            _reduce_chunk(head(states[start:start + step]).float(), targets[start:start + step], parts)
    empty = {"argmax": torch.long}
    return {name: (torch.cat(chunks) if chunks else torch.zeros(0, dtype=empty.get(name, torch.float32))).cpu()
            for name, chunks in parts.items()}


def _reduce_chunk(logits: Any, targets: Any, parts: dict[str, list[Any]]) -> None:
    import torch

    logprobs = torch.log_softmax(logits, dim=-1)
    if "logprob" in parts:
        parts["logprob"].append(logprobs.gather(-1, targets[:, None])[:, 0])
    if "argmax" in parts or "margin" in parts:
        top = logprobs.topk(min(2, logprobs.shape[-1]), dim=-1)
        if "argmax" in parts:
            parts["argmax"].append(top.indices[:, 0])
        if "margin" in parts:
            values = top.values
            parts["margin"].append(values[:, 0] - values[:, 1] if values.shape[-1] > 1 else values[:, 0] * 0)
    if "mean_logprob" in parts or "std_logprob" in parts:
        probs = logprobs.exp()
        mean = (probs * logprobs).sum(-1)
        var = (probs * (logprobs - mean[:, None]).square()).sum(-1)  # centred: no cancellation when flat
        if "mean_logprob" in parts:
            parts["mean_logprob"].append(mean)
        if "std_logprob" in parts:
            parts["std_logprob"].append(var.sqrt())
