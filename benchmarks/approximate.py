"""approximate.similarity: where the time goes, and what encoding each reference once saves.

Measured in one run, on the same model and samples:

1. Greedy generation (memeval's adapter: one teacher-forced pass, generation after the first
   divergence) against scoring: sacrebleu BLEU + chrF + token edit distance, and BERTScore with
   the default encoder (all-MiniLM-L6-v2, layer 6), both per batch as the method runs them.
2. BERTScore of n sampled generations per prefix: one bert_score call per batch, which encodes
   each distinct sentence once (a reference shared by n generations once), against the baseline
   of one call per sample index (each reference encoded n times). Scores checked equal.
3. A warm run: BERTScores replayed from the output cache against computing them.

The model is a GPT-2 (byte tokenizer) trained for a few epochs on documents of random words, so
its generations are word-like text, as a real model's are.

    .venv/bin/python benchmarks/approximate.py [--samples 256] [--per-prefix 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ["amber", "basket", "candle", "copper", "harbor", "lantern", "marble", "meadow", "orchard",
         "pepper", "quiet", "river", "saddle", "silver", "timber", "velvet", "willow", "winter",
         "yellow", "garden", "hollow", "ribbon", "thimble", "pebble", "falcon", "bridge", "cellar",
         "dragon", "ember", "fossil", "glacier", "hammer", "island", "jungle", "kettle", "ladder",
         "mirror", "needle", "oyster", "parrot", "quartz", "rocket", "spider", "tunnel", "violin",
         "walrus"]
PREFIX, SUFFIX = 32, 48


def documents(n: int) -> list[str]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        words: list[str] = []
        while len(" ".join(words)) < PREFIX + SUFFIX + 4:
            words.append(rng.choice(WORDS))
        out.append(" ".join(words))
    return out


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--per-prefix", type=int, default=4, help="sampled generations per prefix")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="prefixes per batch (the model's batch size)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import torch

    from memeval.cache import OutputCache
    from memeval.models import AdapterContext, HFCausal
    from memeval.models.base import CachedCausalLM
    from memeval.models.recipe import RecipeParams, train
    from memeval_plugins.approximate.generation import generate, score_pairs
    from memeval_plugins.approximate.scoring import BertScore, Scorer
    from memeval_plugins.approximate.similarity import SimilarityParams

    torch.set_num_threads(args.threads)
    texts = documents(args.samples)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        recipe = RecipeParams.model_validate({
            "dataset": "d", "architecture": {"n_layer": args.layers, "n_embd": args.width, "n_head": args.width // 64,
                                             "n_positions": 96},
            "training": {"epochs": args.epochs, "batch_size": 32, "learning_rate": 0.003, "threads": args.threads}})
        _, train_seconds = timed(train, recipe, texts, 0, tmp_path / "model")
        context = AdapterContext(base_dir=tmp_path, seed=0, cache=OutputCache(tmp_path / "off", "off"),
                                 cache_dir=tmp_path, load_dataset=lambda name: [])
        raw = HFCausal(HFCausal.Params(path=str(tmp_path / "model"), batch_size=args.batch, threads=args.threads),
                       context)
        model = CachedCausalLM(raw, OutputCache(tmp_path / "off", "off"))
        model.torch_model  # noqa: B018 - load the weights before timing
        lead = model.tokenize([""])[0]
        units = []
        for ids in model.tokenize(texts, add_special_tokens=False):
            unit = {"lead": list(lead), "context": ids[:PREFIX], "suffix": ids[PREFIX:PREFIX + SUFFIX]}
            unit["truth"] = model.decode(unit["suffix"])
            units.append(unit)
        greedy = SimilarityParams(prefix_tokens=PREFIX, suffix_tokens=SUFFIX)
        sampled = SimilarityParams(prefix_tokens=PREFIX, suffix_tokens=SUFFIX, decoding="sample",
                                   num_samples=args.per_prefix)
        text_scorer = Scorer(greedy.model_copy(update={"criteria": ["bleu", "chrf", "edit_distance"]}), None)

        def bertscore(cache_mode: str, cache_dir: Path) -> BertScore:
            return BertScore(greedy.bertscore, Path, [u["truth"] for u in units], OutputCache(cache_dir, cache_mode))

        computing, load_seconds = timed(lambda: bertscore("off", tmp_path / "off"))
        _, encoder_seconds = timed(computing.scorer)  # import bert_score and load the encoder, once a run

        # 1. greedy: generation vs scoring, batch by batch as the method does
        seconds = {"generate": 0.0, "text": 0.0, "bertscore": 0.0}
        greedy_pairs = []
        for batch in batches(units, args.batch):
            generated, spent = timed(generate, model, batch, greedy, 0)
            seconds["generate"] += spent
            pairs = score_pairs(model, batch, generated)
            greedy_pairs += pairs
            seconds["text"] += timed(text_scorer.score, pairs)[1]
            seconds["bertscore"] += timed(computing, [p[0] for p in pairs], [p[2] for p in pairs])[1]
        exact = sum(p[1] == p[3] for p in greedy_pairs)

        # 2. n samples per prefix: one BERTScore call per batch vs one per sample index
        sample_seconds = {"generate": 0.0, "one call": 0.0, "one call per index": 0.0}
        for batch in batches(units, args.batch):
            generated, spent = timed(generate, model, batch, sampled, 0)
            sample_seconds["generate"] += spent
            pairs = score_pairs(model, batch, generated)
            together, spent = timed(computing, [p[0] for p in pairs], [p[2] for p in pairs])
            sample_seconds["one call"] += spent
            apart = np.zeros_like(together)
            for k in range(args.per_prefix):
                chosen = list(range(k, len(pairs), args.per_prefix))
                values, spent = timed(computing, [pairs[i][0] for i in chosen], [pairs[i][2] for i in chosen])
                apart[chosen] = values
                sample_seconds["one call per index"] += spent
            np.testing.assert_allclose(together, apart, atol=1e-5)

        # 3. warm run: BERTScores from the output cache
        stored = bertscore("use", tmp_path / "use")
        stored._scorer = computing.scorer()
        candidates, references = [p[0] for p in greedy_pairs], [p[2] for p in greedy_pairs]
        kept = np.concatenate([stored([candidates[i] for i in batch], [references[i] for i in batch])
                               for batch in batches(list(range(len(greedy_pairs))), args.batch)])
        replay = bertscore("use", tmp_path / "use")  # a fresh run: no encoder loaded
        replayed, replay_seconds = timed(replay, candidates, references)
        assert replay._scorer is None and (replayed == kept).all()
        np.testing.assert_allclose(replayed, computing(candidates, references), atol=1e-5)  # float noise

    n = args.samples
    print(f"model: GPT-2 {args.layers} x {args.width}, byte tokens, trained {args.epochs} epochs on {n} documents "
          f"of random words ({train_seconds:.0f} s); {n} samples, prefix {PREFIX} / suffix {SUFFIX} tokens, "
          f"batch {args.batch}, {args.threads} threads; {exact} of {n} greedy continuations exact")
    print(f"one-off per run: import bert_score + load the encoder {load_seconds + encoder_seconds:.1f} s")
    print(f"\ngreedy, {n} samples          seconds   ms/sample   share")
    total = sum(seconds.values())
    for name, label in (("generate", "generation"), ("text", "BLEU + chrF + edit distance"),
                        ("bertscore", "BERTScore")):
        print(f"  {label:28} {seconds[name]:7.2f} {1000 * seconds[name] / n:10.2f} {seconds[name] / total:8.0%}")
    m = args.per_prefix
    print(f"\nsampled, {m} per prefix ({n * m} generations)")
    print(f"  {'generation':28} {sample_seconds['generate']:7.2f}")
    print(f"  {'BERTScore, one call/batch':28} {sample_seconds['one call']:7.2f}   (each reference encoded once)")
    print(f"  {'BERTScore, one call/index':28} {sample_seconds['one call per index']:7.2f}   (baseline: "
          f"{m}x per reference) -> {sample_seconds['one call per index'] / sample_seconds['one call']:.2f}x slower")
    print(f"\nwarm run, {n} BERTScores: replayed from the cache in {replay_seconds:.3f} s "
          f"({seconds['bertscore'] / replay_seconds:.0f}x faster than computing; no encoder loaded)")
    print("checked: one call per batch and one per index give equal scores (1e-5); the replay is what was "
          "stored and equals a recomputation (1e-5)")


if __name__ == "__main__":
    main()
