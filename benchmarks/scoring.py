"""Scoring speed: length-sorted batches vs. arrival-order batches, and cache replay vs. compute.

Both paths score the same sequences with the same model and the outputs are checked equal. The
model is a randomly initialised GPT-2 (4 layers, width 256, byte tokenizer): speed does not depend
on the weights, and nothing is downloaded.

    .venv/bin/python benchmarks/scoring.py [--samples 600] [--batch-size 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from memeval.cache import OutputCache  # noqa: E402
from memeval.models import AdapterContext, CachedCausalLM, HFCausal  # noqa: E402
from memeval.models.recipe import ArchitectureRecipe, save_untrained  # noqa: E402


def make_model(out: Path) -> None:
    save_untrained(out, ArchitectureRecipe(n_layer=4, n_embd=256, n_head=4, n_positions=512))


def arrival_order_scores(adapter: HFCausal, sequences: list[list[int]], batch_size: int) -> list:
    """The baseline: batches in the order the data came, each padded to its longest member."""
    out = []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start:start + batch_size]
        # One call per batch with a batch size that forbids the adapter's own sorting across batches.
        out.extend(adapter.score(batch))
    return out


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lengths = rng.lognormal(mean=4.0, sigma=0.8, size=args.samples).clip(8, 500).astype(int)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_model(root / "model")
        cache = OutputCache(root / "cache")
        context = AdapterContext(base_dir=root, seed=0, cache=cache, cache_dir=root / "cache", load_dataset=lambda n: [])
        adapter = HFCausal(HFCausal.Params(path=str(root / "model"), batch_size=args.batch_size,
                                           threads=args.threads), context)
        sequences = [[adapter.tokenizer.bos_token_id, *rng.integers(0, 256, size=n).tolist()] for n in lengths]
        adapter.score(sequences[:2])  # load weights before timing
        tokens = int(sum(len(s) for s in sequences))

        baseline, t_base = timed(lambda: arrival_order_scores(adapter, sequences, args.batch_size))
        sorted_scores, t_sorted = timed(lambda: adapter.score(sequences))
        for a, b in zip(baseline, sorted_scores, strict=True):
            np.testing.assert_allclose(a.logprob, b.logprob, atol=1e-4)
        cached = CachedCausalLM(adapter, cache)
        _, t_fill = timed(lambda: cached.score(sequences))
        replay, t_replay = timed(lambda: CachedCausalLM(adapter, cache).score(sequences))
        for a, b in zip(sorted_scores, replay, strict=True):
            np.testing.assert_allclose(a.logprob, b.logprob, atol=1e-6)

    print(f"{args.samples} sequences, {tokens} tokens (lengths 8-500, lognormal), batch {args.batch_size}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print(f"arrival-order batches (baseline): {t_base:7.2f} s  {tokens / t_base:9.0f} tok/s")
    print(f"length-sorted batches:            {t_sorted:7.2f} s  {tokens / t_sorted:9.0f} tok/s  "
          f"speed-up x{t_base / t_sorted:.2f}")
    print(f"compute + write to cache:         {t_fill:7.2f} s")
    print(f"replay from cache:                {t_replay:7.2f} s  speed-up over computing x{t_sorted / t_replay:.0f}")


if __name__ == "__main__":
    main()
