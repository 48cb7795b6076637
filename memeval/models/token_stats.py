"""Per-position next-token statistics of a causal LM, the LM head applied to the final hidden
states a chunk of positions at a time: no [batch, length, vocab] tensor (nor its log-softmax) is
ever formed, and padding positions are never projected."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

# Logits formed at once (16 MB in float32; three such buffers when the mean/std are asked for):
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
    and standard deviation of log p(z) under the model's next-token distribution.

    Every chunk is reduced in the same [chunk, V] buffers: a fresh set of full-vocabulary
    temporaries per chunk left glibc holding 700-900 MB of freed heap after scoring 64 windows
    with SmolLM2 (49,152-token vocabulary)."""
    import torch

    vocab = head.out_features if hasattr(head, "out_features") else states.shape[-1]
    step = max(1, CHUNK_ELEMENTS // max(1, vocab))
    parts: dict[str, list[Any]] = {name: [] for name in stats}
    width = min(step, states.shape[0])
    logits = torch.empty((width, vocab), dtype=torch.float32, device=states.device)
    softmax = bool(set(stats) - {"argmax", "margin"})  # the top two logits need no normalising
    scratch = torch.empty_like(logits) if softmax else None
    product = torch.empty_like(logits) if {"mean_logprob", "std_logprob"} & set(stats) else None
    with torch.inference_mode():
        for start in range(0, states.shape[0], step):
            chunk = states[start:start + step]
            n = chunk.shape[0]
            _reduce_chunk(_project(chunk, head, logits[:n]), None if scratch is None else scratch[:n],
                          None if product is None else product[:n], targets[start:start + step], parts)
    empty = {"argmax": torch.long}
    return {name: (torch.cat(chunks) if chunks else torch.zeros(0, dtype=empty.get(name, torch.float32))).cpu()
            for name, chunks in parts.items()}


def _project(chunk: Any, head: Any, out: Any) -> Any:
    """head(chunk) as float32 written into `out` (no new [chunk, V] tensor for a float32 linear head)."""
    import torch

    weight = getattr(head, "weight", None)
    if isinstance(head, torch.nn.Linear) and weight.dtype == torch.float32 and chunk.dtype == torch.float32:
        torch.mm(chunk, weight.t(), out=out)
        if head.bias is not None:
            out.add_(head.bias)
        return out
    return out.copy_(head(chunk))


def _reduce_chunk(logits: Any, scratch: Any, product: Any, targets: Any, parts: dict[str, list[Any]]) -> None:
    """The statistics of one chunk, in place: `logits` becomes the log-probs (then their deviation
    from the mean), `scratch` the probabilities, `product` their products (summed pairwise: a row
    dot product's float32 error makes a flat distribution's std 1.5e-5 instead of 0); only [chunk]
    vectors are allocated."""
    import torch

    if "argmax" in parts or "margin" in parts:
        top = logits.topk(min(2, logits.shape[-1]), dim=-1)  # a shift by a row constant keeps them
        if "argmax" in parts:
            parts["argmax"].append(top.indices[:, 0])
        if "margin" in parts:
            values = top.values
            parts["margin"].append(values[:, 0] - values[:, 1] if values.shape[-1] > 1 else values[:, 0] * 0)
    if scratch is None:
        return
    peak = logits.amax(-1, keepdim=True)
    logits.sub_(peak)
    torch.exp(logits, out=scratch)
    total = scratch.sum(-1, keepdim=True)
    logits.sub_(total.log())  # log-softmax
    if "logprob" in parts:
        parts["logprob"].append(logits.gather(-1, targets[:, None])[:, 0])
    if "mean_logprob" in parts or "std_logprob" in parts:
        scratch.div_(total)  # probabilities
        mean = torch.mul(scratch, logits, out=product).sum(-1)
        logits.sub_(mean[:, None]).square_()  # centred: no cancellation when flat
        if "mean_logprob" in parts:
            parts["mean_logprob"].append(mean)
        if "std_logprob" in parts:
            parts["std_logprob"].append(torch.mul(scratch, logits, out=product).sum(-1).sqrt())
