"""hf-causal against plain transformers on the same checkpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from memeval.errors import UsageError
from memeval.models import HFCausal, decode_pool
from memeval.models.base import matched
from memeval.models.hf_causal import VerifyDepth

TEXTS = ["red fox jumps", "the lazy dog and cat runs over the red fox", "cat", "zq wx vb 42 and the dog",
         "over the lazy dog", "runs and runs and runs and runs and jumps"]


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_score_equals_one_unpadded_forward_per_sequence(hf_model, reference):
    model, tok = reference
    sequences = hf_model.tokenize(TEXTS)
    scores = hf_model.score(sequences)
    totals = hf_model.sequence_logprob(sequences)
    for ids, score, total in zip(sequences, scores, totals, strict=True):
        with torch.no_grad():
            logprobs = model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
        target = torch.tensor(ids[1:])
        np.testing.assert_allclose(score.logprob, logprobs[torch.arange(len(target)), target].numpy(), atol=1e-5)
        assert total == pytest.approx(float(logprobs[torch.arange(len(target)), target].double().sum()), abs=1e-4)
        assert score.argmax.tolist() == logprobs.argmax(-1).tolist()
        top2 = logprobs.topk(2, -1).values
        np.testing.assert_allclose(score.margin, (top2[:, 0] - top2[:, 1]).numpy(), atol=1e-5)
        p = logprobs.exp()
        mean = (p * logprobs).sum(-1)
        np.testing.assert_allclose(score.mean_logprob, mean.numpy(), atol=1e-5)
        std = ((p * (logprobs - mean[:, None]) ** 2).sum(-1)).sqrt()
        np.testing.assert_allclose(score.std_logprob, std.numpy(), atol=1e-4)


def test_tokenizer_adds_bos_and_round_trips(hf_model):
    ids = hf_model.tokenize(["héllo wörld"])[0]
    assert ids[0] == hf_model.tokenizer.bos_token_id
    assert hf_model.decode(ids[1:]) == "héllo wörld"


# Tokenizes 8,000 distinct texts of ~200 bytes in chunks as `tokenize` does; prints how much the
# resident set grew and a digest of the ids. In its own process: pytest's heap would absorb the growth.
WORD_CACHE_PROBE = """
import hashlib, sys
from transformers import AutoTokenizer
from memeval.models.base import drop_whole_text_cache
tok = AutoTokenizer.from_pretrained(sys.argv[1])
if sys.argv[2] == "memeval":
    drop_whole_text_cache(tok)
def rss():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
texts = [f"{i:05d} " + "memorized text, cached words " * 6 for i in range(8000)]
tok(texts[:1000])
before, digest = rss(), hashlib.sha256()
for start in range(1000, len(texts), 1000):
    digest.update(repr(tok(texts[start:start + 1000])["input_ids"]).encode())
print((rss() - before) // 1024, digest.hexdigest())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_tokenizer_that_keeps_texts_whole_does_not_cache_them(tiny_model_dir):
    """The byte tokenizer keeps each text one piece, so its word cache would hold every distinct text
    (up to 10,000): memory that grows with the data a run reads. Loaded by memeval it caches none;
    the same tokens either way."""
    def grown(mode: str) -> tuple[int, str]:
        out = subprocess.run([sys.executable, "-c", WORD_CACHE_PROBE, str(tiny_model_dir), mode],
                             capture_output=True, text=True, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        megabytes, digest = out.stdout.split()
        return int(megabytes), digest

    plain, memeval = grown("plain"), grown("memeval")
    assert plain[0] >= 25, plain  # the cache this guards against: 7,000 texts of ~190 bytes
    assert memeval[0] <= 8, memeval
    assert memeval[1] == plain[1]


def test_batched_greedy_generation_equals_one_by_one_generate(hf_model, reference):
    model, tok = reference
    prompts = hf_model.tokenize(TEXTS)
    batched = hf_model.generate(prompts, max_new_tokens=12)
    for prompt, got in zip(prompts, batched, strict=True):
        with torch.no_grad():
            alone = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id,
                                   eos_token_id=None)
        assert got == alone[0, len(prompt):].tolist()
        assert len(got) == 12


def test_sampled_generation_is_seeded(hf_model):
    prompts = hf_model.tokenize(TEXTS[:3])
    a = hf_model.generate(prompts, max_new_tokens=8, do_sample=True, temperature=1.0, top_k=50, seed=3)
    b = hf_model.generate(prompts, max_new_tokens=8, do_sample=True, temperature=1.0, top_k=50, seed=3)
    assert a == b


def test_identity_hashes_the_weights(tiny_model_dir, tmp_path, hf_model):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    context = hf_model.context
    same = HFCausal(HFCausal.Params(path=str(copy)), context)
    assert same.identity()["files_sha256"] == hf_model.identity()["files_sha256"]
    weights = copy / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    changed = HFCausal(HFCausal.Params(path=str(copy)), context)
    assert changed.identity_key != same.identity_key
    assert HFCausal(HFCausal.Params(path=str(copy), dtype="bfloat16"), context).identity_key != changed.identity_key


def test_missing_local_directory_is_a_usage_error(tmp_path, hf_model):
    with pytest.raises(UsageError, match="does not exist"):
        HFCausal(HFCausal.Params(path="./no/such/model"), hf_model.context)


def test_hub_id_offline_fails_fast_with_a_clear_error(tmp_path, hf_model):
    adapter = HFCausal(HFCausal.Params(path="gpt2"), hf_model.context)
    assert adapter.identity()["revision"] == "main"
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE=1"):
        adapter.tokenize(["x"])




def test_generation_ignores_the_checkpoints_own_generation_defaults(tiny_model_dir, tmp_path, hf_model):
    """A checkpoint's generation_config.json (an EOS, top_k=50, ...) must not change what is measured."""
    import json

    copy = tmp_path / "eos"
    shutil.copytree(tiny_model_dir, copy)
    prompts = hf_model.tokenize(["red fox", "the dog"])
    greedy = hf_model.generate(prompts, max_new_tokens=10)
    config = json.loads((copy / "generation_config.json").read_text())
    config.update({"eos_token_id": greedy[0][0], "top_k": 5, "do_sample": True, "repetition_penalty": 2.0})
    (copy / "generation_config.json").write_text(json.dumps(config))
    other = HFCausal(HFCausal.Params(path=str(copy), batch_size=4), hf_model.context)
    assert other.generate(prompts, max_new_tokens=10) == greedy
    assert all(len(g) == 10 for g in greedy)


def test_samples_do_not_depend_on_batch_composition(hf_model):
    prompts = hf_model.tokenize(TEXTS[:3])
    options = {"do_sample": True, "temperature": 1.5, "seed": 4}
    together = hf_model.generate(prompts, max_new_tokens=8, **options)
    alone = hf_model.generate(prompts[2:], max_new_tokens=8, **options)
    assert alone[0] == together[2]
    same_prompt = hf_model.generate([prompts[0]] * 4, max_new_tokens=8, sample_indices=[0, 1, 2, 3], **options)
    assert same_prompt[0] == together[0] and len({tuple(s) for s in same_prompt}) == 4


def test_cached_sampling_replays_each_sample(hf_model, tmp_path):
    from memeval.cache import OutputCache
    from memeval.models import CachedCausalLM

    prompt = hf_model.tokenize(["the lazy"])[0]
    options = {"do_sample": True, "temperature": 2.0, "top_k": 0, "seed": 1}
    first = CachedCausalLM(hf_model, OutputCache(tmp_path / "c")).generate([prompt] * 4, 6,
                                                                           sample_indices=range(4), **options)
    replay = CachedCausalLM(hf_model, OutputCache(tmp_path / "c", "only")).generate([prompt] * 4, 6,
                                                                                   sample_indices=range(4), **options)
    assert replay == first and len({tuple(s) for s in first}) == 4


def test_top_k_one_is_greedy_and_decay_starts_hot(hf_model):
    prompts = hf_model.tokenize(TEXTS[:4])
    greedy = hf_model.generate(prompts, max_new_tokens=6)
    assert hf_model.generate(prompts, max_new_tokens=6, do_sample=True, top_k=1, seed=9) == greedy
    decayed = hf_model.generate(prompts, max_new_tokens=6, do_sample=True, temperature=1.0,
                                temperature_decay=(10.0, 5), seed=9)
    assert all(len(d) == 6 for d in decayed)


def test_generation_and_scoring_refuse_what_the_model_cannot_take(hf_model):
    limit = hf_model.context_length
    with pytest.raises(ValueError, match="exceeds the model's context"):
        hf_model.generate([[1] * (limit - 2)], max_new_tokens=5)
    with pytest.raises(ValueError, match="empty"):
        hf_model.score([[]])
    with pytest.raises(UsageError, match="outside the model's vocabulary"):
        hf_model.score([[1, 99999]])


def test_greedy_continuation_reuses_scores_another_method_cached(hf_model, tmp_path, monkeypatch):
    from memeval.cache import OutputCache
    from memeval.models.base import CachedCausalLM

    sequences = [ids for ids in hf_model.tokenize(TEXTS) if len(ids) > 6]
    prompts = [len(ids) // 2 for ids in sequences]
    first = CachedCausalLM(hf_model, OutputCache(tmp_path / "a")).greedy_continuation(sequences, prompts)
    scored_first = CachedCausalLM(hf_model, OutputCache(tmp_path / "b"))
    scored_first.score(sequences)  # e.g. lm.loss ran before extraction.discoverable

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the teacher-forced pass was run again")

    monkeypatch.setattr(hf_model, "score", no_second_pass)
    monkeypatch.setattr(hf_model, "greedy_continuation", no_second_pass)
    second = scored_first.greedy_continuation(sequences, prompts)
    for ids, p, (s1, g1), (s2, g2) in zip(sequences, prompts, first, second, strict=True):
        assert g1 == g2 == hf_model.generate([ids[:p]], len(ids) - p)[0]
        np.testing.assert_array_equal(s1.logprob, s2.logprob)


def test_lm_head_is_split_off_only_where_logits_are_head_of_states(tiny_model_dir, hf_model):
    from transformers import GPT2LMHeadModel

    from memeval.models.token_stats import split_head

    assert hf_model._head is not None

    class Scaled(GPT2LMHeadModel):  # a final logit transform, as soft-capping models have
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2
            return out

    assert split_head(Scaled.from_pretrained(tiny_model_dir).eval()) is None


def test_position_stats_in_chunks_equal_the_full_log_softmax(monkeypatch):
    from memeval.models import token_stats

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    states, targets = torch.randn(37, 8), torch.randint(0, 50, (37,))
    monkeypatch.setattr(token_stats, "CHUNK_ELEMENTS", 50 * 5)  # 5 positions per chunk
    got = token_stats.position_stats(states, head, targets)
    with torch.no_grad():
        logprobs = head(states).log_softmax(-1).double()
    p = logprobs.exp()
    mean = (p * logprobs).sum(-1)
    top = logprobs.topk(2, -1).values
    expected = {"logprob": logprobs[torch.arange(37), targets], "argmax": logprobs.argmax(-1),
                "margin": top[:, 0] - top[:, 1], "mean_logprob": mean,
                "std_logprob": (p * (logprobs - mean[:, None]) ** 2).sum(-1).sqrt()}
    for name, value in expected.items():
        np.testing.assert_allclose(got[name].double().numpy(), value.numpy(), atol=1e-5, err_msg=name)
    assert set(token_stats.position_stats(states, head, targets, ("logprob",))) == {"logprob"}


@pytest.mark.parametrize("cache_share", [0.0, 1e6], ids=["one-batch-pool", "four-batch-pool"])
def test_pooled_decoding_after_divergence_equals_generate(hf_model, monkeypatch, cache_share):
    # 7 batches of 4: the pool of rows left to decode flushes mid-way and mixes rows of different
    # batches, prompt lengths and divergence points; rows leave the decoding batch as they finish.
    monkeypatch.setattr(decode_pool, "POOL_CACHE_SHARE", cache_share)
    words = ["red", "fox", "jumps", "over", "the", "lazy", "dog", "and", "cat", "runs"]
    texts = [" ".join(words[(i + k * (1 + i % 3)) % len(words)] for k in range(3 + i % 5)) for i in range(28)]
    sequences = hf_model.tokenize(texts)
    prompts = [max(1, len(ids) // 3 + i % 4) for i, ids in enumerate(sequences)]
    pairs = hf_model.greedy_continuation(sequences, prompts)
    from_scores = hf_model.continue_greedy(sequences, prompts, [score for score, _ in pairs])
    for ids, p, (_, got), again in zip(sequences, prompts, pairs, from_scores, strict=True):
        assert got == again == hf_model.generate([ids[:p]], len(ids) - p)[0]


def test_decode_pool_size_is_bounded_by_batches_and_by_the_memory_held():
    mb = 1 << 20
    assert decode_pool.pool_rows(16, column_bytes=18_432, columns=64, held_bytes=1000 * mb) == 48  # 3 batches
    assert decode_pool.pool_rows(16, column_bytes=18_432, columns=64, held_bytes=300 * mb) == 40  # its share
    assert decode_pool.pool_rows(16, column_bytes=18_432, columns=64, held_bytes=10 * mb) == 16  # one batch at least


def test_verify_depth_follows_how_far_the_greedy_paths_reproduce_their_suffix():
    assert matched([5, 6, 9], [5, 6, 7]) == 2 and matched([5, 6], [5, 6, 7]) == 2 and matched([1], [2]) == 0
    depth = VerifyDepth()
    depth.observe([0] * 15)
    assert depth.tokens() == 4  # too few rows seen to judge
    depth.observe([0])
    assert depth.tokens() == 0  # nothing memorized: verifying would cost every row and save none
    mixed = VerifyDepth()
    mixed.observe([0] * 4 + [1] * 2 + [2] * 4 + [3] * 2 + [32] * 8)  # of 20: 16, 14, 10, 8 reach 1, 2, 3, 4
    assert mixed.tokens() == 3
    memorized = VerifyDepth()
    memorized.observe([32] * 20)
    assert memorized.tokens() == 4


def test_greedy_paths_adapt_their_verification_without_changing_the_paths(hf_model):
    words = ["red", "fox", "jumps", "over", "the", "lazy", "dog", "and", "cat", "runs"]
    sequences = hf_model.tokenize([" ".join(words[(i + k) % len(words)] for k in range(8)) for i in range(40)])
    prompts = [3] * len(sequences)
    expected = [hf_model.generate([ids[:3]], len(ids) - 3)[0] for ids in sequences]
    first = hf_model.greedy_paths(sequences[:20], prompts[:20])
    assert hf_model._verify_depth.rows == 20
    later = hf_model.greedy_paths(sequences[20:], prompts[20:])  # at the depth the first 20 rows chose
    assert [p.tokens for p in first + later] == expected


@pytest.mark.parametrize("verify_tokens", [0, 2, 100])
def test_greedy_paths_equal_generate_with_the_margins_of_each_step(hf_model, reference, verify_tokens):
    # Rows diverging before, inside and after the verified tokens, and rows reproducing their suffix.
    model, tok = reference
    words = ["red", "fox", "jumps", "over", "the", "lazy", "dog", "and", "cat", "runs"]
    texts = [" ".join(words[(i + k * (1 + i % 3)) % len(words)] for k in range(3 + i % 5)) for i in range(20)]
    sequences = hf_model.tokenize(texts)
    prompts = [max(1, len(ids) // 3 + i % 4) for i, ids in enumerate(sequences)]
    generated = [hf_model.generate([ids[:p]], len(ids) - p)[0] for ids, p in zip(sequences, prompts, strict=True)]
    sequences += [ids[:p] + made for ids, p, made in zip(sequences[:4], prompts[:4], generated[:4], strict=True)]
    prompts += prompts[:4]
    generated += generated[:4]
    paths = hf_model.greedy_paths(sequences, prompts, verify_tokens=verify_tokens)
    for ids, p, made, path in zip(sequences, prompts, generated, paths, strict=True):
        assert path.tokens == made
        with torch.no_grad():
            logits = model(torch.tensor([ids[:p] + made])).logits[0, p - 1:-1]
        top = logits.topk(2, -1).values
        np.testing.assert_allclose(path.margins, (top[:, 0] - top[:, 1]).numpy(), atol=1e-4)


def test_greedy_paths_are_cached_by_prompt_and_length(hf_model, tmp_path):
    from memeval.cache import OutputCache
    from memeval.models.base import CachedCausalLM

    sequences = [ids for ids in hf_model.tokenize(TEXTS) if len(ids) > 6]
    prompts = [len(ids) // 2 for ids in sequences]
    cached = CachedCausalLM(hf_model, OutputCache(tmp_path))
    first = cached.greedy_paths(sequences, prompts)
    other_truth = [ids[:p] + [ids[0]] * (len(ids) - p) for ids, p in zip(sequences, prompts, strict=True)]
    again = cached.greedy_paths(other_truth, prompts)  # the same prompts: replayed
    assert cached.counter.cache_hits == len(sequences)
    assert [a.tokens for a in first] == [b.tokens for b in again]


def test_scored_greedy_paths_give_the_scores_and_the_paths_of_one_pass(hf_model, reference):
    model, _ = reference
    words = ["red", "fox", "jumps", "over", "the", "lazy", "dog", "and", "cat", "runs"]
    sequences = hf_model.tokenize([" ".join(words[(i + k * (1 + i % 3)) % len(words)] for k in range(3 + i % 5))
                                   for i in range(16)])
    prompts = [max(1, len(ids) // 3 + i % 4) for i, ids in enumerate(sequences)]
    generated = [hf_model.generate([ids[:p]], len(ids) - p)[0] for ids, p in zip(sequences, prompts, strict=True)]
    sequences += [ids[:p] + made for ids, p, made in zip(sequences[:3], prompts[:3], generated[:3], strict=True)]
    prompts += prompts[:3]
    generated += generated[:3]  # rows that reproduce their suffix: no decoding at all
    pairs = hf_model.scored_greedy_paths(sequences, prompts)
    for (score, path), alone, ids, p, made in zip(pairs, hf_model.score(sequences), sequences, prompts, generated,
                                                  strict=True):
        assert path.tokens == made
        np.testing.assert_allclose(score.logprob, alone.logprob, atol=1e-5)
        assert score.argmax.tolist() == alone.argmax.tolist()
        with torch.no_grad():
            logits = model(torch.tensor([ids[:p] + made])).logits[0, p - 1:-1]
        top = logits.topk(2, -1).values
        np.testing.assert_allclose(path.margins, (top[:, 0] - top[:, 1]).numpy(), atol=1e-4)


def test_greedy_paths_score_for_others_what_is_not_cached_yet(hf_model, tmp_path, monkeypatch):
    from memeval.cache import OutputCache, output_key
    from memeval.models.base import CachedCausalLM

    sequences = [ids for ids in hf_model.tokenize(TEXTS) if len(ids) > 6]
    prompts = [len(ids) // 2 for ids in sequences]
    expected = [p.tokens for p in hf_model.greedy_paths(sequences, prompts)]
    cached = CachedCausalLM(hf_model, OutputCache(tmp_path / "use"))
    cached.score(sequences[:1])  # another method scored the first already
    fused: list[list[int]] = []
    original = hf_model.scored_greedy_paths
    monkeypatch.setattr(hf_model, "scored_greedy_paths", lambda seqs, ps: fused.extend(seqs) or original(seqs, ps))
    wanted = [True] * (len(sequences) - 1) + [False]
    paths = cached.greedy_paths(sequences, prompts, scored_too=wanted)
    assert [p.tokens for p in paths] == expected
    assert fused == sequences[1:-1]  # not the one scored already, nor the one nobody reads
    keys = [output_key(cached.model_id, "score", {}, ids) for ids in sequences]
    assert set(cached.cache.get_many(keys)) == set(keys[:-1])
    before = cached.counter.computed
    scores = cached.score(sequences[:-1])
    assert cached.counter.computed == before  # replayed
    for score, alone in zip(scores, hf_model.score(sequences[:-1]), strict=True):
        np.testing.assert_allclose(score.logprob, alone.logprob, atol=1e-5)
    fused.clear()
    off = CachedCausalLM(hf_model, OutputCache(tmp_path / "off", mode="off"))
    off.greedy_paths(sequences, prompts, scored_too=[True] * len(sequences))
    assert fused == []  # nothing would keep the scores for anyone
