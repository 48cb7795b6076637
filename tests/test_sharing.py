"""The sharing plan: greedy extraction scores, in its own pass, what the other methods read."""

from __future__ import annotations

import json

import pytest
from helpers import read_run, write_jsonl

WORDS = ["red", "fox", "jumps", "over", "the", "lazy", "dog", "and", "cat", "runs"]


def texts(n: int, chars: int) -> list[str]:
    return [(f"{i:02d} " + " ".join(WORDS[(i + k) % 10] for k in range(12)))[:chars] for i in range(n)]


def write_suite(tmp_path, model_dir, evaluations: list[str]):
    path = tmp_path / "s.yaml"
    path.write_text(f"""
memeval: 1
suite: sharing
models: {json.dumps({"m": {"adapter": "hf-causal", "path": str(model_dir)}})}
datasets:
  d: {{loader: jsonl, path: d.jsonl}}
  n: {{loader: jsonl, path: n.jsonl}}
evaluations:
""" + "".join(f"  - {e}\n" for e in evaluations))
    return path


LOSS = "{id: loss, method: lm.loss, model: m, dataset: d}"
MIA = "{id: mia, method: membership.attack, model: m, dataset: d, params: {non_members: n, attacks: [loss, min_k]}}"
GREEDY = "{id: greedy, method: extraction.discoverable, model: m, dataset: d, params: {prefix_tokens: 8, suffix_tokens: 16}}"
SAMPLED = ("{id: sampled, method: extraction.probabilistic, model: m, dataset: d, "
           "params: {prefix_tokens: 8, suffix_tokens: 16}}")


def run(run_cli, suite, out, *options):
    code, _, err = run_cli("run", suite, "--cache-dir", out / "cache", "--out", out / "run", *options)
    assert code == 0, err
    result = read_run(out / "run")
    greedy = [json.loads(line) for line in (out / "run" / "records" / "greedy.jsonl").read_text().splitlines()]
    return result, {e["id"]: e["model_calls"]["computed"] for e in result["evaluations"]}, greedy, err


def test_greedy_extraction_runs_first_and_its_pass_serves_every_method(tiny_model_dir, tmp_path, run_cli):
    # Texts of exactly prefix + suffix bytes: every method reads the very same token sequences.
    members = texts(30, 24)
    write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in members])
    write_jsonl(tmp_path / "n.jsonl", [{"text": t[::-1]} for t in members])
    suite = write_suite(tmp_path, tiny_model_dir, [LOSS, MIA, GREEDY, SAMPLED])
    shared, computed, paths, err = run(run_cli, suite, tmp_path / "shared")
    assert [e["id"] for e in shared["evaluations"]] == ["loss", "mia", "greedy", "sampled"]  # as in the suite
    started = {e["id"]: e["started_at"] for e in shared["evaluations"]}
    assert started["greedy"] <= started["loss"] <= started["mia"] <= started["sampled"]
    assert "evaluation 'greedy' runs before 'loss'" in err
    assert computed == {"greedy": 30, "loss": 0, "mia": 30, "sampled": 0}  # mia: the non-members only

    alone, computed, plain_paths, _ = run(run_cli, suite, tmp_path / "alone", "-p", "no:sharing")
    assert [e["id"] for e in alone["evaluations"]] == ["loss", "mia", "greedy", "sampled"]
    assert computed == {"loss": 30, "mia": 30, "greedy": 30, "sampled": 0}
    for fused, plain in zip(paths, plain_paths, strict=True):  # the same greedy paths either way
        assert fused["generated_ids"] == plain["generated_ids"] and fused["exact"] == plain["exact"]
        assert fused["margins"] == pytest.approx(plain["margins"], abs=1e-4)
    metrics = {e["id"]: {m["name"]: m["value"] for m in e["metrics"]} for e in alone["evaluations"]}
    for evaluation in shared["evaluations"]:
        for m in evaluation["metrics"]:
            assert m["value"] == pytest.approx(metrics[evaluation["id"]][m["name"]], abs=1e-5)


def test_only_whole_samples_are_scored_for_a_method_that_reads_whole_samples(tiny_model_dir, tmp_path, run_cli):
    members = texts(20, 24)[:10] + texts(20, 30)[10:]  # the last 10 go on after the suffix
    write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in members])
    write_jsonl(tmp_path / "n.jsonl", [])
    suite = write_suite(tmp_path, tiny_model_dir, [LOSS, GREEDY])
    _, computed, _, _ = run(run_cli, suite, tmp_path / "out")
    assert computed == {"greedy": 20, "loss": 10}


def test_nothing_moves_without_a_reader_of_the_same_scores(tiny_model_dir, tmp_path, run_cli):
    write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts(12, 24)])
    write_jsonl(tmp_path / "n.jsonl", [])
    cut = "{id: loss, method: lm.loss, model: m, dataset: d, params: {max_tokens: 20}}"
    other = SAMPLED.replace("prefix_tokens: 8", "prefix_tokens: 6")
    suite = write_suite(tmp_path, tiny_model_dir, [cut, other, GREEDY])
    result, computed, _, err = run(run_cli, suite, tmp_path / "out")
    assert [e["id"] for e in result["evaluations"]] == ["loss", "sampled", "greedy"]
    assert "runs before" not in err
    assert computed == {"loss": 12, "sampled": 12, "greedy": 12}
