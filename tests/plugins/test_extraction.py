"""extraction.*: the fast path against plain generate, closed forms, brute force, planted truth."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from helpers import REPO, read_run, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from memeval.corpus import CorpusIndex, corpus_fingerprint
from memeval_plugins.extraction.probabilistic import extraction_odds
from memeval_plugins.extraction.untargeted import distinct

WORDS = ["red", "fox", "jumps", "over", "the", "lazy", "dog", "and", "cat", "runs"]


def grammar_texts(n: int, seed: int = 0) -> list[str]:
    """Texts like the tiny model's training data, some verbatim, some perturbed."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        start = rng.randrange(10)
        words = [WORDS[(start + 3 * k + i // 10) % 10] for k in range(10)]
        if i % 3 == 0:
            words[rng.randrange(10)] = rng.choice(WORDS)
        out.append(" ".join(words))
    return out


def write_suite(path, models: dict, datasets: dict, evaluations: str):
    path.write_text(f"""
memeval: 1
suite: extraction
models: {json.dumps(models)}
datasets: {json.dumps(datasets)}
evaluations:
{evaluations}
""")
    return path


def records(run_dir, evaluation):
    return [json.loads(x) for x in (run_dir / "records" / f"{evaluation}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("teacher_forced", [False, True])
def test_fast_path_equals_plain_greedy_generate(tmp_path, run_cli, cache_dir, teacher_forced):
    texts = grammar_texts(220)
    write_jsonl(tmp_path / "d.jsonl", [{"id": f"s{i}", "text": t} for i, t in enumerate(texts)])
    memorizer = {"adapter": "recipe", "dataset": "d", "batch_size": 16,
                 "architecture": {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 64},
                 "training": {"epochs": 12, "batch_size": 16, "learning_rate": 0.005}}
    flag = str(teacher_forced).lower()
    suite = write_suite(tmp_path / "s.yaml", {"m": memorizer},
                        {"d": {"loader": "jsonl", "path": "d.jsonl", "id_field": "id"}}, f"""
  - id: ex
    method: extraction.discoverable
    model: m
    dataset: d
    params: {{prefix_tokens: 10, suffix_tokens: 14, teacher_forced: {flag}}}
""")
    assert run_cli("run", suite, "--out", tmp_path / "run")[0] == 0
    got = {r["id"]: r for r in records(tmp_path / "run", "ex")}
    assert len(got) == 220
    trained = read_run(tmp_path / "run")["models"]["m"]["path"]
    model = AutoModelForCausalLM.from_pretrained(trained).eval()
    tok = AutoTokenizer.from_pretrained(trained)
    exact = partial = 0
    for i, text in enumerate(texts):
        ids = tok(text).input_ids  # BOS + bytes
        prompt, truth = ids[:11], ids[11:25]
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 11, dtype=torch.long),
                                 max_new_tokens=14, do_sample=False, pad_token_id=tok.pad_token_id,
                                 eos_token_id=None)[0, 11:].tolist()
        record = got[f"s{i}"]
        assert record["generated_ids"] == out
        assert record["memorization_score"] == pytest.approx(np.mean(np.array(out) == np.array(truth)))
        assert record["exact"] == (out == truth)
        first = next((j for j, (a, b) in enumerate(zip(out, truth, strict=True)) if a != b), 14)
        assert record["first_divergence"] == first
        exact += record["exact"]
        partial += 0 < record["memorization_score"] < 1
    assert exact > 0 and partial > 0, "the comparison should cover both exact and partial extractions"
    metrics = {m["name"]: m for m in read_run(tmp_path / "run")["evaluations"][0]["metrics"]}
    assert metrics["extractable_rate"]["value"] == pytest.approx(exact / 220)
    if teacher_forced:
        assert metrics["teacher_forced_accuracy_mean"]["value"] >= metrics["memorization_score_mean"]["value"] - 1e-9
    else:
        assert "teacher_forced_accuracy_mean" not in metrics


def test_probabilistic_extraction_equals_a_direct_computation(tiny_model_dir, tmp_path, run_cli, cache_dir):
    texts = grammar_texts(12, seed=1)
    write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    suite = write_suite(tmp_path / "s.yaml", {"m": {"adapter": "hf-causal", "path": str(tiny_model_dir)}},
                        {"d": {"loader": "jsonl", "path": "d.jsonl"}}, """
  - id: plain
    method: extraction.probabilistic
    model: m
    dataset: d
    params: {prefix_tokens: 8, suffix_tokens: 10, n_queries: 100}
  - id: deployed
    method: extraction.probabilistic
    model: m
    dataset: d
    params: {prefix_tokens: 8, suffix_tokens: 10, temperature: 0.7, top_k: 5, top_p: 0.9, n_queries: 100}
""")
    assert run_cli("run", suite, "--out", tmp_path / "run")[0] == 0
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for name, (temp, top_k, top_p) in {"plain": (1.0, None, None), "deployed": (0.7, 5, 0.9)}.items():
        for record, text in zip(records(tmp_path / "run", name), texts, strict=True):
            ids = tok(text).input_ids[:19]
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, 8:18].double() / temp
            if top_k:
                kth = logits.topk(top_k, -1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, -math.inf)
            if top_p:
                probs = logits.softmax(-1)
                sorted_probs, order = probs.sort(-1, descending=True)
                keep_sorted = sorted_probs.cumsum(-1) - sorted_probs < top_p  # smallest set reaching top_p
                keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
                logits = logits.masked_fill(~keep, -math.inf)
            log_p = logits.log_softmax(-1)[torch.arange(10), torch.tensor(ids[9:19])].sum().item()
            if math.isinf(log_p):
                assert record["p_z"] == 0.0
            else:
                assert record["log_p_z"] == pytest.approx(log_p, abs=1e-3)
                assert record["probability_within_n"] == pytest.approx(1 - (1 - math.exp(log_p)) ** 100, rel=1e-6)


def test_extraction_odds_closed_form():
    odds = extraction_odds(math.log(0.01), 100, 0.5)
    assert odds["probability_within_n"] == pytest.approx(1 - 0.99 ** 100)
    assert odds["queries_needed"] == math.ceil(math.log(0.5) / math.log(0.99))  # 69
    assert extraction_odds(0.0, 5, 0.5) == {"probability_within_n": 1.0, "queries_needed": 1}
    assert extraction_odds(-math.inf, 5, 0.5)["probability_within_n"] == 0.0
    tiny = extraction_odds(-60.0, 10, 0.5)  # p_z ~ 1e-26: no underflow to 0 for 1-(1-p)^n
    assert tiny["probability_within_n"] == pytest.approx(10 * math.exp(-60.0), rel=1e-6)
    near_one = extraction_odds(-1e-12, 1, 0.5)  # 1 - p_z = 1e-12, lost if p_z is formed first
    assert near_one["probability_within_n"] == pytest.approx(1.0) and near_one["queries_needed"] == 1


def test_extraction_odds_agree_with_arbitrary_precision_where_p_z_underflows():
    import mpmath

    mpmath.mp.dps = 60
    for log_p, n, target in ((-800.0, 10, 0.5), (-745.5, 10**6, 0.9), (-2000.0, 7, 0.01), (-700.0, 1000, 0.5),
                             (-1e-12, 3, 0.999999), (-30.0, 10**9, 0.5), (-0.1, 50, 0.99), (-49.9, 10**20, 0.5)):
        p_z = mpmath.exp(log_p)
        log1m = mpmath.log1p(-p_z)
        odds = extraction_odds(log_p, n, target)
        assert odds["probability_within_n"] == pytest.approx(float(-mpmath.expm1(n * log1m)), rel=1e-9, abs=0)
        needed = mpmath.ceil(mpmath.log1p(-target) / log1m)
        assert abs(mpmath.mpf(odds["queries_needed"]) - needed) <= max(1, needed * 1e-12), (log_p, n, target)
    assert extraction_odds(-1e-17, 3, 0.5) == {"probability_within_n": 1.0, "queries_needed": 1}


@pytest.mark.slow
def test_exposure_matches_brute_force_and_the_skew_normal_estimate(tiny_model_dir, tmp_path, run_cli, cache_dir):
    rng = random.Random(5)
    canaries = [{"id": f"c{i}", "text": f"the dog code is {s} ok", "secret": s}
                for i, s in enumerate(f"{rng.randrange(10**4):04d}" for _ in range(3))]
    write_jsonl(tmp_path / "c.jsonl", canaries)
    suite = write_suite(tmp_path / "s.yaml", {"m": {"adapter": "hf-causal", "path": str(tiny_model_dir),
                                                   "batch_size": 64}},
                        {"c": {"loader": "jsonl", "path": "c.jsonl", "id_field": "id"}}, """
  - id: exact
    method: extraction.exposure
    model: m
    dataset: c
    params: {method: exact}
  - id: estimated
    method: extraction.exposure
    model: m
    dataset: c
    params: {method: skew_normal, samples: 2000}
""")
    assert run_cli("run", suite, "--out", tmp_path / "run")[0] == 0
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    exact = {r["id"]: r for r in records(tmp_path / "run", "exact")}
    estimated = {r["id"]: r for r in records(tmp_path / "run", "estimated")}
    for canary in canaries:
        texts = [canary["text"].replace(canary["secret"], f"{i:04d}") for i in range(10**4)]
        log_ppl = []
        for start in range(0, len(texts), 500):
            ids = torch.tensor([tok(t).input_ids for t in texts[start:start + 500]])  # same length: no padding
            with torch.no_grad():
                lp = model(ids).logits[:, :-1].double().log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
            log_ppl.extend((-lp.sum(-1)).tolist())
        log_ppl = np.array(log_ppl)
        mine = log_ppl[int(canary["secret"])]
        rank = int(np.sum(log_ppl <= mine + 1e-9))  # ties (within float noise) count against the canary
        got = exact[canary["id"]]
        assert got["rank"] == rank
        assert got["exposure"] == pytest.approx(math.log2(10**4) - math.log2(rank))
        # The extrapolation from 2000 random candidates lands within 1 bit of the exact value.
        assert abs(estimated[canary["id"]]["exposure"] - got["exposure"]) < 1.0, (estimated[canary["id"]], got)


def test_forecast_precision_and_recall_on_hand_built_sets(tmp_path, run_cli):
    small = {"a": True, "b": True, "c": False, "d": False, "e": True}
    large = {"a": True, "b": False, "c": True, "d": False, "e": True, "f": True}
    for name, memorized in {"small": small, "large": large}.items():
        run = tmp_path / name
        write_jsonl(run / "records" / "ex.jsonl", [{"id": k, "exact": v, "memorization_score": float(v)}
                                                   for k, v in memorized.items()])
        (run / "run.json").write_text(json.dumps({"schema_version": 1, "evaluations": [
            {"id": "ex", "records_path": "records/ex.jsonl", "status": "passed"}]}))
    suite = write_suite(tmp_path / "s.yaml", {}, {}, """
  - id: forecast
    method: extraction.forecast
    params: {source: {evaluation: ex, run: small}, target: {evaluation: ex, run: large}}
""")
    assert run_cli("run", suite, "--out", tmp_path / "run")[0] == 0
    metrics = {m["name"]: m for m in read_run(tmp_path / "run")["evaluations"][0]["metrics"]}
    # Shared ids a-e: forecast {a, b, e}, truth {a, c, e}, both {a, e}.
    assert metrics["forecast_precision"]["value"] == pytest.approx(2 / 3)
    assert metrics["forecast_recall"]["value"] == pytest.approx(2 / 3)
    assert metrics["n_target_memorized"]["value"] == 3


def test_forecast_references_are_checked_before_running(tmp_path, run_cli, tiny_model_dir):
    write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in grammar_texts(5)])
    suite = write_suite(tmp_path / "s.yaml", {"m": {"adapter": "hf-causal", "path": str(tiny_model_dir)}},
                        {"d": {"loader": "jsonl", "path": "d.jsonl"}}, """
  - id: forecast
    method: extraction.forecast
    params: {source: {evaluation: later}, target: {evaluation: nope}}
  - {id: later, method: extraction.discoverable, model: m, dataset: d}
""")
    code, _, err = run_cli("validate", suite)
    assert code == 4
    assert "params.source.evaluation: evaluation 'later' must come earlier in the suite" in err
    assert "params.target.evaluation: no evaluation 'nope'" in err


PREFIX_SUFFIX_METHODS = {"extraction.discoverable": "", "extraction.probabilistic": "",
                         "approximate.similarity": ", criteria: [bleu]",
                         "approximate.compare": ", criteria: [bleu], mitigated_model: other"}


@pytest.mark.parametrize("method", PREFIX_SUFFIX_METHODS)
def test_a_prefix_and_suffix_beyond_the_context_is_the_same_usage_error(method, tmp_path, run_cli, tiny_model_dir):
    """The tiny model sees 64 tokens: 40 + 30 cannot be prompted and scored at once. Every method
    that splits samples into a prefix and a suffix refuses it alike (exit code 4), before any
    forward pass."""
    write_jsonl(tmp_path / "d.jsonl", [{"text": " ".join(WORDS * 3)}])
    model = {"adapter": "hf-causal", "path": str(tiny_model_dir)}
    suite = write_suite(tmp_path / "s.yaml", {"m": model, "other": model}, {"d": {"loader": "jsonl", "path": "d.jsonl"}},
                        f"  - {{id: e, method: {method}, model: m, dataset: d, "
                        f"params: {{prefix_tokens: 40, suffix_tokens: 30{PREFIX_SUFFIX_METHODS[method]}}}}}")
    code, _, err = run_cli("run", suite, "--out", tmp_path / "run")
    assert code == 4, err
    assert "evaluations[0]: prefix + suffix (40 + 30 tokens, 71 with the tokenizer's BOS) exceed the model's " \
           "context of 64 tokens" in err


def test_one_forward_pass_serves_every_method(tiny_model_dir, tmp_path, run_cli, cache_dir):
    # Texts of exactly prefix + suffix bytes: every method scores the very same token sequences.
    texts = [f"{i:02d}{t}"[:24] for i, t in enumerate(grammar_texts(30, seed=2))]
    write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    write_jsonl(tmp_path / "n.jsonl", [{"text": t[::-1]} for t in texts])
    suite = write_suite(tmp_path / "s.yaml", {"m": {"adapter": "hf-causal", "path": str(tiny_model_dir)}},
                        {"d": {"loader": "jsonl", "path": "d.jsonl"}, "n": {"loader": "jsonl", "path": "n.jsonl"}},
                        """
  - {id: greedy, method: extraction.discoverable, model: m, dataset: d,
     params: {prefix_tokens: 8, suffix_tokens: 16, memorization_score: false}}
  - {id: sampled, method: extraction.probabilistic, model: m, dataset: d, params: {prefix_tokens: 8, suffix_tokens: 16}}
  - {id: loss, method: lm.loss, model: m, dataset: d}
  - {id: mia, method: membership.attack, model: m, dataset: d, params: {non_members: n, attacks: [loss, min_k]}}
""")
    assert run_cli("run", suite, "--cache-dir", tmp_path / "cache", "--out", tmp_path / "run")[0] == 0
    calls = {e["id"]: e["model_calls"] for e in read_run(tmp_path / "run")["evaluations"]}
    assert calls["greedy"]["computed"] == 30
    assert calls["sampled"]["computed"] == calls["loss"]["computed"] == 0
    assert calls["mia"]["computed"] == 30  # only the non-members are new


def test_corpus_index_streams_and_finds_windows(tmp_path):
    docs = ["the access code for alice is 123456", "nothing to see here at all, really nothing"]
    index = CorpusIndex.open_or_build(tmp_path, corpus_fingerprint(iter(docs)), 12, iter(docs))
    found = index.find("xx code for alice is 9")
    assert found == " code for al" and found in docs[0]
    assert index.find("completely unrelated text") is None
    assert index.size() == sum(len(d) - 11 for d in docs)
    again = CorpusIndex.open_or_build(tmp_path, corpus_fingerprint(iter(docs)), 12, iter(()))
    assert again.size() == index.size()  # reused, not rebuilt


def test_trigram_deduplication():
    a = {"ids": list(range(20))}
    near = {"ids": list(range(20)) + [99]}
    other = {"ids": list(range(100, 120))}
    assert distinct([a, near, other], 0.5, 10) == [a, other]
    assert distinct([a, near, other], 0.5, 1) == [a]


QUICKSTART_DATA = REPO / "suites" / "data" / "quickstart"


@pytest.mark.slow
def test_planted_canaries_ground_truth(tmp_path, run_cli, cache_dir):
    import yaml

    quickstart = yaml.safe_load((REPO / "suites" / "quickstart.yaml").read_text())
    data = {name: {**spec, "path": str(REPO / "suites" / spec["path"])} for name, spec in quickstart["datasets"].items()}
    suite = write_suite(tmp_path / "s.yaml", {"tiny": quickstart["models"]["tiny"]}, data, """
  - {id: canaries, method: extraction.discoverable, model: tiny, dataset: canary-split,
     params: {prefix_tokens: 32, suffix_tokens: 6}}
  - {id: controls, method: extraction.discoverable, model: tiny, dataset: control-split,
     params: {prefix_tokens: 32, suffix_tokens: 6}}
  - {id: exposure, method: extraction.exposure, model: tiny, dataset: canaries, params: {samples: 1000}}
  - {id: untargeted, method: extraction.untargeted, model: tiny,
     params: {corpus: train, num_samples: 100, max_new_tokens: 40}}
""")
    assert run_cli("run", suite, "--out", tmp_path / "run")[0] == 0
    repeats = {r["id"]: r["repeats"] for r in map(json.loads, (QUICKSTART_DATA / "canaries.jsonl").open())}
    extracted = {r["id"]: r["exact"] for r in records(tmp_path / "run", "canaries")}
    assert all(extracted[i] for i, n in repeats.items() if n == 16)
    assert not any(r["exact"] for r in records(tmp_path / "run", "controls"))
    exposure = {}
    for r in records(tmp_path / "run", "exposure"):
        exposure.setdefault(r["repeats"], []).append(r["exposure"])
    means = {n: np.mean(exposure[n]) for n in (1, 4, 16)}
    # Seen 4 or 16 times per epoch, a code is more exposed than one seen once; both are near the cap
    # of log2(10^6) = 19.93 bits (rank 1 of a million), where noise in the fit decides their order.
    assert means[1] < means[4] and means[1] < means[16], means
    assert means[16] > math.log2(10**6) - 1.0, means
    planted = {json.loads(line)["text"] for line in (QUICKSTART_DATA / "canaries.jsonl").open()}
    top = read_run(tmp_path / "run")["evaluations"][3]["artifacts"]["top_candidates"]["perplexity"]
    assert any(any(p in c["text"] for p in planted) for c in top), [c["text"] for c in top]
