"""End to end through the CLI on a tiny recipe model: exit codes, run.json, records, gates."""

from __future__ import annotations

import json

from helpers import read_run


def test_run_passes_and_writes_run_json_and_records(tiny_suite, run_cli, tmp_path):
    suite = tiny_suite()
    code, out, _ = run_cli("run", suite, "--out", tmp_path / "run")
    assert code == 0, out
    run = read_run(tmp_path / "run")
    assert run["schema_version"] == 1 and run["status"] == "completed" and run["exit_code"] == 0
    evaluation = run["evaluations"][0]
    assert evaluation["status"] == "passed" and evaluation["n_samples"] == 40
    assert {m["name"] for m in evaluation["metrics"]} >= {"loss_mean", "perplexity_mean"}
    assert evaluation["gates"][0]["passed"] is True
    assert run["models"]["tiny"]["adapter"] == "recipe" and run["models"]["tiny"]["files_sha256"]
    assert "torch" in run["environment"]["packages"]
    records = [json.loads(line) for line in (tmp_path / "run" / "records" / "train-loss.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(f"t{i}" for i in range(40))
    loss = next(m for m in evaluation["metrics"] if m["name"] == "loss_mean")
    assert abs(loss["value"] - sum(r["loss"] for r in records) / len(records)) < 1e-9
    assert loss["ci_low"] <= loss["value"] <= loss["ci_high"]
    assert "PASSED" in out and "train-loss" in out


def test_impossible_gate_exits_1(tiny_suite, run_cli, tmp_path):
    suite = tiny_suite("""
      - id: train-loss
        method: lm.loss
        model: tiny
        dataset: train
        gates:
          - {metric: loss_mean, max: 0.0}
    """)
    code, out, _ = run_cli("run", suite, "--out", tmp_path / "run")
    assert code == 1
    assert "gate FAILED: loss_mean" in out and "above the maximum 0" in out
    gate = read_run(tmp_path / "run")["evaluations"][0]["gates"][0]
    assert gate["passed"] is False and gate["threshold"] == 0.0


TWO = """
  - id: train-loss
    method: lm.loss
    model: tiny
    dataset: train
  - id: unseen-loss
    method: lm.loss
    model: tiny
    dataset: unseen
"""


def test_keyword_selection_and_nothing_selected(tiny_suite, run_cli, tmp_path):
    suite = tiny_suite(TWO)
    code, _, _ = run_cli("run", suite, "-k", "unseen", "--out", tmp_path / "a")
    assert code == 0
    assert [e["id"] for e in read_run(tmp_path / "a")["evaluations"]] == ["unseen-loss"]
    code, _, _ = run_cli("run", suite, "-k", "not loss", "--out", tmp_path / "b")
    assert code == 5
    assert read_run(tmp_path / "b")["evaluations"] == []


def test_limit_and_seed_override(tiny_suite, run_cli, tmp_path):
    code, _, _ = run_cli("run", tiny_suite(), "--limit", "5", "--seed", "0", "--out", tmp_path / "r")
    assert code == 0
    assert read_run(tmp_path / "r")["evaluations"][0]["n_samples"] == 5


def test_cache_replay_computes_nothing_and_cache_only_miss_is_usage_error(tiny_suite, run_cli, tmp_path):
    suite = tiny_suite()
    cache = tmp_path / "own-cache"
    # --cache-dir holds outputs; the recipe model is trained into it on first use.
    assert run_cli("run", suite, "--cache-dir", cache, "--out", tmp_path / "1")[0] == 0
    first = read_run(tmp_path / "1")["evaluations"][0]
    assert first["model_calls"]["computed"] == 40 and first["model_calls"]["cache_hits"] == 0
    assert run_cli("run", suite, "--cache-dir", cache, "--cache", "only", "--out", tmp_path / "2")[0] == 0
    second = read_run(tmp_path / "2")["evaluations"][0]
    assert second["model_calls"] == {"computed": 0, "cache_hits": 40, "batches": 0}
    assert second["metrics"] == first["metrics"]
    code, _, err = run_cli("run", suite, "--cache-dir", tmp_path / "empty", "--cache", "only", "--out", tmp_path / "3")
    assert code == 4 and "--cache only" in err
    assert run_cli("run", suite, "--cache-dir", cache, "--cache", "refresh", "--out", tmp_path / "4")[0] == 0
    assert read_run(tmp_path / "4")["evaluations"][0]["model_calls"]["computed"] == 40


def test_baseline_gate(tiny_suite, run_cli, tmp_path):
    assert run_cli("run", tiny_suite(), "--out", tmp_path / "base")[0] == 0
    gated = tiny_suite(f"""
      - id: train-loss
        method: lm.loss
        model: tiny
        dataset: train
        gates:
          - {{metric: loss_mean, baseline: {tmp_path / 'base'}, max_increase: 0.0, max_decrease: 0.0}}
    """, name="gated.yaml")
    assert run_cli("run", gated, "--out", tmp_path / "same")[0] == 0
    # Fewer samples change the mean: a zero-tolerance baseline gate must catch it.
    code, out, _ = run_cli("run", gated, "--limit", "3", "--out", tmp_path / "less")
    assert code == 1 and "than 0" in out


def test_model_override_points_at_a_checkpoint(tiny_suite, run_cli, tmp_path):
    suite = tiny_suite()
    assert run_cli("run", suite, "--out", tmp_path / "a")[0] == 0
    trained = read_run(tmp_path / "a")["models"]["tiny"]["path"]
    code, _, _ = run_cli("run", suite, "--model", f"tiny={trained}", "--out", tmp_path / "b")
    assert code == 0
    a, b = read_run(tmp_path / "a"), read_run(tmp_path / "b")
    assert b["models"]["tiny"]["adapter"] == "hf-causal"
    assert b["models"]["tiny"]["files_sha256"] == a["models"]["tiny"]["files_sha256"]
    assert b["evaluations"][0]["metrics"] == a["evaluations"][0]["metrics"]
    code, _, err = run_cli("run", suite, "--model", "tinny=/nowhere", "--out", tmp_path / "c")
    assert code == 4 and "did you mean 'tiny'" in err


def test_a_method_that_raises_is_an_internal_error_and_others_still_run(tiny_suite, run_cli, tmp_path):
    suite = tiny_suite("""
      - id: boom
        method: test.broken
        model: tiny
        dataset: train
      - id: fine
        method: lm.loss
        model: tiny
        dataset: unseen
    """)
    code, out, _ = run_cli("run", suite, "-p", "broken_plugin", "--out", tmp_path / "r")
    assert code == 3
    run = read_run(tmp_path / "r")
    assert [e["status"] for e in run["evaluations"]] == ["error", "passed"]
    assert "RuntimeError: planted failure" in run["evaluations"][0]["error"]


def test_nothing_left_to_evaluate_is_a_usage_error(tiny_suite, run_cli, tmp_path):
    (tmp_path / "data" / "empty-text.jsonl").write_text('{"text": ""}\n{"text": ""}\n')
    suite = tiny_suite("""
      - {id: blank, method: lm.loss, model: tiny, dataset: blank}
    """, extra="")
    suite.write_text(suite.read_text().replace("datasets:\n", "datasets:\n  blank: {loader: jsonl, path: data/empty-text.jsonl}\n"))
    code, _, err = run_cli("run", suite, "--out", tmp_path / "r")
    assert code == 4 and "nothing to evaluate" in err
    run = read_run(tmp_path / "r")
    assert run["status"] == "error" and "nothing to evaluate" in run["error"] and "'blank'" in run["error"]


def test_non_text_values_are_usage_errors_naming_the_row(tiny_suite, run_cli, tmp_path):
    (tmp_path / "data" / "nulls.jsonl").write_text('{"text": "ok"}\n{"text": null}\n')
    suite = tiny_suite("""
      - {id: nulls, method: lm.loss, model: tiny, dataset: nulls}
    """)
    suite.write_text(suite.read_text().replace("datasets:\n", "datasets:\n  nulls: {loader: jsonl, path: data/nulls.jsonl}\n"))
    code, _, err = run_cli("run", suite, "--out", tmp_path / "r")
    assert code == 4 and "datasets.nulls: row 1: column 'text' should hold text, got None" in err


def test_bad_baseline_and_bad_out_dir_are_usage_errors(tiny_suite, run_cli, tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    suite = tiny_suite(f"""
      - id: train-loss
        method: lm.loss
        model: tiny
        dataset: train
        gates:
          - {{metric: loss_mean, baseline: {tmp_path / 'broken.json'}, max_increase: 0.1}}
    """)
    code, _, err = run_cli("validate", suite)
    assert code == 4 and "is not a memeval run.json" in err
    (tmp_path / "afile").write_text("x")
    assert run_cli("run", tiny_suite(name="ok.yaml"), "--out", tmp_path / "afile")[0] == 4
    assert run_cli("run", tiny_suite(name="ok.yaml"), "--cache-dir", tmp_path / "afile", "--out", tmp_path / "o")[0] == 4


def test_several_suites_exit_5_only_when_none_ran_and_never_share_a_directory(tiny_suite, run_cli, tmp_path):
    first = tiny_suite(TWO, name="a.yaml")
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    second = other_dir / "a.yaml"
    second.write_text(first.read_text().replace("path: data/", f"path: {tmp_path}/data/"))
    code, _, _ = run_cli("run", first, second, "-k", "unseen", "--out", tmp_path / "both")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == ["a", "a-2"]
    assert run_cli("run", first, second, "-k", "nomatch", "--out", tmp_path / "none")[0] == 5


def test_a_failing_hook_outside_evaluations_is_recorded(tiny_suite, run_cli, tmp_path, monkeypatch):
    (tmp_path / "badhook.py").write_text(
        "from memeval import hookimpl\n\n@hookimpl\ndef memeval_evaluation_finish(item, result):\n"
        "    raise RuntimeError('hook bug')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, _, err = run_cli("run", tiny_suite(), "-p", "badhook", "--out", tmp_path / "r")
    assert code == 3 and "hook bug" in err
    run = read_run(tmp_path / "r")  # the evaluation that had just finished is kept, the failure recorded
    assert run["status"] == "completed" and run["exit_code"] == 3 and "hook bug" in run["failures"][0]
    assert [e["id"] for e in run["evaluations"]] == ["train-loss"] and run["evaluations"][0]["status"] == "passed"


def test_recipe_identity_ignores_the_training_log(tiny_suite, run_cli, tmp_path):
    assert run_cli("run", tiny_suite(), "--out", tmp_path / "r")[0] == 0
    identity = read_run(tmp_path / "r")["models"]["tiny"]
    assert "model.safetensors" in identity["files_sha256"] and "recipe.json" not in identity["files_sha256"]
