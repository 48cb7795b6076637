"""membership.attack: attack scores against direct computations, and planted ground truth."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from helpers import read_run, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from memeval.models.base import TokenScores
from memeval_plugins.membership import (
    attack_score,
    lowest_k_count,
    lowest_k_mean,
    standardized_logprob,
)

WORDS = ["amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper", "kelp", "lumen", "mossy", "nectar", "onyx", "prism", "quartz", "raven", "sable", "thorn", "umber", "vapor", "willow", "xenon", "yarrow", "zephyr"]
RECIPE = {"adapter": "recipe", "dataset": "members", "tokenizer": {"kind": "bytes"},
          "architecture": {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 64},
          "training": {"epochs": 40, "batch_size": 8, "learning_rate": 0.005}, "batch_size": 16}


def random_docs(rng, n, words=(5, 8)):
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) for _ in range(n)]


def suite_text(models: dict, evaluations: str, non_members: str = "non.jsonl") -> str:
    return f"""
memeval: 1
suite: mia
seed: 0
datasets:
  members: {{loader: jsonl, path: members.jsonl}}
  non: {{loader: jsonl, path: {non_members}}}
models: {json.dumps(models)}
evaluations:
{evaluations}
"""


@pytest.fixture
def split(tmp_path):
    rng = random.Random(7)
    docs = random_docs(rng, 120)
    write_jsonl(tmp_path / "members.jsonl", [{"text": t} for t in docs[:60]])
    write_jsonl(tmp_path / "non.jsonl", [{"text": t} for t in docs[60:]])
    return tmp_path


def metrics_of(run_dir, index=0):
    evaluation = read_run(run_dir)["evaluations"][index]
    return {m["name"]: m for m in evaluation["metrics"]}, evaluation


MIA = """  - id: mia
    method: membership.attack
    model: target
    dataset: members
    params: {non_members: non, attacks: [loss, zlib, min_k, min_k_plus_plus]}
"""


@pytest.mark.slow
def test_trained_model_leaks_membership_and_an_untrained_one_does_not(split, run_cli, cache_dir, slow_untrained):
    (split / "s.yaml").write_text(suite_text({"target": RECIPE}, MIA))
    assert run_cli("run", split / "s.yaml", "--out", split / "trained")[0] == 0
    trained, evaluation = metrics_of(split / "trained")
    for attack in ("loss", "zlib", "min_k", "min_k_plus_plus"):
        assert trained[f"{attack}_auc"]["ci_low"] > 0.6, trained[f"{attack}_auc"]
    assert trained["blind_auc"]["ci_low"] <= 0.5
    assert any("non-members" in w for w in evaluation["warnings"])  # 60 < 1/0.001
    assert evaluation["artifacts"]["roc"]["loss"]["fpr"][0] == 0.0
    assert "non-strict" in evaluation["artifacts"]["conventions"]["tpr_at_fpr"]

    untrained = {"adapter": "hf-causal", "path": str(slow_untrained)}
    (split / "u.yaml").write_text(suite_text({"target": untrained}, MIA))
    assert run_cli("run", split / "u.yaml", "--out", split / "untrained")[0] == 0
    chance, _ = metrics_of(split / "untrained")
    for attack in ("loss", "zlib", "min_k", "min_k_plus_plus"):
        assert chance[f"{attack}_auc"]["ci_low"] < 0.5 < chance[f"{attack}_auc"]["ci_high"], chance[f"{attack}_auc"]


@pytest.fixture(scope="module")
def slow_untrained(tmp_path_factory):
    """A randomly initialised model with the recipe's shape and tokenizer."""
    from memeval.models.recipe import ArchitectureRecipe, save_untrained

    out = tmp_path_factory.mktemp("untrained")
    save_untrained(out, ArchitectureRecipe(**RECIPE["architecture"]))
    return out


def test_attack_scores_equal_a_direct_per_token_computation(tiny_model_dir, tmp_path, run_cli, cache_dir):
    rng = random.Random(1)
    texts = random_docs(rng, 16)
    write_jsonl(tmp_path / "members.jsonl", [{"text": t.title()} for t in texts[:8]])
    write_jsonl(tmp_path / "non.jsonl", [{"text": t} for t in texts[8:]])
    models = {"target": {"adapter": "hf-causal", "path": str(tiny_model_dir)},
              "ref": {"adapter": "hf-causal", "path": str(tiny_model_dir), "dtype": "bfloat16"}}
    (tmp_path / "s.yaml").write_text(suite_text(models, """  - id: mia
    method: membership.attack
    model: target
    dataset: members
    params: {non_members: non, reference_model: ref, k: 0.3}
"""))
    assert run_cli("run", tmp_path / "s.yaml", "--out", tmp_path / "run")[0] == 0
    records = [json.loads(x) for x in (tmp_path / "run/records/mia.jsonl").read_text().splitlines()]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def token_stats(m, text):
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            lp = m(ids).logits[0, :-1].float().log_softmax(-1)
        target = lp[torch.arange(ids.shape[1] - 1), ids[0, 1:]].double().numpy()
        p = lp.exp().double()
        mu = (p * lp.double()).sum(-1).numpy()
        sigma = np.sqrt((p * (lp.double() - torch.tensor(mu)[:, None]) ** 2).sum(-1).numpy())
        return target, mu, sigma

    assert len(records) == 16
    for record in records:
        text = record["text"]
        lp, mu, sigma = token_stats(model, text)
        n_low = math.ceil(0.3 * lp.size)
        expected = {
            "loss": lp.mean(),
            "zlib": lp.mean() / len(__import__("zlib").compress(text.encode())),
            "lowercase": lp.mean() - token_stats(model, text.lower())[0].mean(),
            "reference": lp.mean() - token_stats(ref, text)[0].mean(),
            "min_k": np.sort(lp)[:n_low].mean(),
            "min_k_plus_plus": np.sort((lp - mu) / sigma)[:n_low].mean(),
        }
        for attack, value in expected.items():
            assert record["scores"][attack] == pytest.approx(value, abs=2e-4), (attack, text)


def test_min_k_plus_plus_stays_finite_on_a_flat_distribution(tiny_model_dir, tmp_path):
    flat = TokenScores(logprob=np.full(6, -math.log(258), dtype=np.float32), argmax=np.zeros(6, dtype=np.int64),
                       margin=np.zeros(6, dtype=np.float32), mean_logprob=np.full(6, -math.log(258), dtype=np.float32),
                       std_logprob=np.zeros(6, dtype=np.float32))
    assert standardized_logprob(flat).tolist() == [0.0] * 6
    assert attack_score("min_k_plus_plus", flat, "x", 0.2, None, None) == 0.0
    # A real model whose output layer is zeroed predicts exactly uniform next-token distributions.
    from memeval.cache import OutputCache
    from memeval.models import AdapterContext, HFCausal

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(tmp_path / "flat")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "flat")
    context = AdapterContext(base_dir=tmp_path, seed=0, cache=OutputCache(tmp_path / "c"), cache_dir=tmp_path / "c",
                             load_dataset=lambda name: [])
    adapter = HFCausal(HFCausal.Params(path=str(tmp_path / "flat")), context)
    scores = adapter.score(adapter.tokenize(["red fox jumps over the dog"]))[0]
    value = attack_score("min_k_plus_plus", scores, "", 0.2, None, None)
    assert math.isfinite(value) and abs(value) < 1e-3


def test_lowest_k_mean_takes_at_least_one_token():
    assert lowest_k_mean(np.array([3.0, 1.0, 2.0]), 0.01) == 1.0
    assert lowest_k_mean(np.array([3.0, 1.0, 2.0, 0.0]), 0.5) == 0.5


def test_lowest_k_count_is_the_exact_decimal_ceiling():
    from decimal import Decimal

    assert [lowest_k_count(k, n) for k, n in ((0.55, 100), (0.07, 100), (0.28, 25))] == [55, 7, 7]
    for hundredths in range(1, 101):
        k = hundredths / 100
        for n in (1, 3, 7, 25, 100, 999):
            assert lowest_k_count(k, n) == math.ceil(Decimal(str(k)) * n), (k, n)
    assert lowest_k_mean(np.arange(100.0)[::-1], 0.55) == pytest.approx(np.arange(55.0).mean())


def test_zlib_attack_compresses_the_text_it_scores_when_max_tokens_cuts_it(tiny_model_dir, tmp_path, run_cli,
                                                                            cache_dir):
    import zlib

    rng = random.Random(2)
    texts = random_docs(rng, 8, (12, 16))
    write_jsonl(tmp_path / "members.jsonl", [{"text": t} for t in texts[:4]])
    write_jsonl(tmp_path / "non.jsonl", [{"text": t} for t in texts[4:]])
    (tmp_path / "s.yaml").write_text(suite_text({"target": {"adapter": "hf-causal", "path": str(tiny_model_dir)}},
                                                """  - id: mia
    method: membership.attack
    model: target
    dataset: members
    params: {non_members: non, attacks: [loss, zlib], blind_baseline: false, max_tokens: 20}
"""))
    assert run_cli("run", tmp_path / "s.yaml", "--out", tmp_path / "run")[0] == 0
    records = [json.loads(x) for x in (tmp_path / "run/records/mia.jsonl").read_text().splitlines()]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for record in records:
        ids = tok(record["text"]).input_ids[:20]
        assert record["cut_tokens"] > 0
        with torch.no_grad():
            lp = model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
        mean = lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].double().mean().item()
        kept_text = tok.decode(ids)
        assert len(kept_text) < len(record["text"])
        assert record["scores"]["zlib"] == pytest.approx(mean / len(zlib.compress(kept_text.encode())), abs=2e-5)


def test_blind_baseline_flags_a_biased_split(tmp_path, run_cli, tiny_model_dir, cache_dir):
    rng = random.Random(3)
    write_jsonl(tmp_path / "members.jsonl", [{"text": t} for t in random_docs(rng, 40, (12, 16))])
    write_jsonl(tmp_path / "non.jsonl", [{"text": t} for t in random_docs(rng, 40, (3, 5))])
    suite = suite_text({"target": {"adapter": "hf-causal", "path": str(tiny_model_dir)}}, MIA)
    (tmp_path / "s.yaml").write_text(suite)
    code, _, err = run_cli("run", tmp_path / "s.yaml", "--out", tmp_path / "run")
    assert code == 4 and "cut to the model's context of 64 tokens" in err  # the long members do not fit
    (tmp_path / "s.yaml").write_text(suite + "on_truncate: warn\n")
    assert run_cli("run", tmp_path / "s.yaml", "--out", tmp_path / "run")[0] == 0
    metrics, evaluation = metrics_of(tmp_path / "run")
    assert metrics["blind_auc"]["ci_low"] > 0.9
    assert any("separable without the model" in w for w in evaluation["warnings"])
    assert evaluation["truncated"] > 0 and any(w.startswith("truncated: ") for w in evaluation["warnings"])


def test_attacks_share_one_forward_pass(split, run_cli, tiny_model_dir, cache_dir):
    models = {"target": {"adapter": "hf-causal", "path": str(tiny_model_dir)}}
    evaluations = """  - id: loss-only
    method: membership.attack
    model: target
    dataset: members
    params: {non_members: non, attacks: [loss], blind_baseline: false}
  - id: four-attacks
    method: membership.attack
    model: target
    dataset: members
    params: {non_members: non, attacks: [loss, zlib, min_k, min_k_plus_plus]}
  - id: lm-loss-too
    method: lm.loss
    model: target
    dataset: members
"""
    (split / "s.yaml").write_text(suite_text(models, evaluations))
    assert run_cli("run", split / "s.yaml", "--cache-dir", split / "cache", "--out", split / "run")[0] == 0
    calls = [e["model_calls"] for e in read_run(split / "run")["evaluations"]]
    assert calls[0]["computed"] == 120
    assert calls[1] == {"computed": 0, "cache_hits": 120, "batches": 0}
    assert calls[2] == {"computed": 0, "cache_hits": 60, "batches": 0}


def test_gate_on_an_attack_that_is_not_run_is_a_suite_error(split, run_cli, tiny_model_dir):
    models = {"target": {"adapter": "hf-causal", "path": str(tiny_model_dir)}}
    evaluations = """  - id: mia
    method: membership.attack
    model: target
    dataset: members
    params: {non_members: nn, attacks: [reference]}
    gates:
      - {metric: lowercase_auc, max: 0.6}
"""
    (split / "s.yaml").write_text(suite_text(models, evaluations))
    code, _, err = run_cli("validate", split / "s.yaml")
    assert code == 4
    assert "attack 'reference' needs 'reference_model'" in err
    evaluations = evaluations.replace("attacks: [reference]", "attacks: [loss]")
    (split / "s.yaml").write_text(suite_text(models, evaluations))
    code, _, err = run_cli("validate", split / "s.yaml")
    assert "evaluations[0].params.non_members: unknown dataset 'nn'; did you mean 'non'?" in err
    assert "evaluations[0].gates[0].metric: metric 'lowercase_auc' is not produced with these params" in err


def test_lowercase_attack_is_skipped_on_lowercase_text_and_few_non_members_warn_once(tiny_suite, run_cli, tmp_path):
    suite = tiny_suite("""
      - id: members
        method: membership.attack
        model: tiny
        dataset: train
        params: {non_members: unseen, blind_baseline: false}
    """)
    code, stdout, stderr = run_cli("run", suite, "--out", tmp_path / "run")
    assert code == 0, stdout + stderr
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    (evaluation,) = run["evaluations"]
    names = {m["name"] for m in evaluation["metrics"]}
    assert "loss_auc" in names and not any(n.startswith("lowercase") for n in names)
    warnings = evaluation["warnings"]
    assert sum("lowercase" in w for w in warnings) == 1 and "already lower-case" in warnings[0]
    thin = [w for w in warnings if "non-members" in w]
    assert len(thin) == 1 and "only 12 non-members" in thin[0] and "1pct needs 100" in thin[0]
    assert "lowercase" not in evaluation["artifacts"]["roc"]
