"""lm.loss equals the loss plain transformers computes on the same model and texts."""

from __future__ import annotations

import json
import math

import torch
from helpers import read_run, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXTS = ["red fox jumps over", "the lazy dog", "zq wx vb 42", "cat and dog and fox and the lazy red one", "x y"]


def test_lm_loss_matches_transformers(tiny_model_dir, tmp_path, run_cli, cache_dir):
    write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in TEXTS])
    suite = tmp_path / "s.yaml"
    suite.write_text(f"""
memeval: 1
suite: lm
models:
  m: {{adapter: hf-causal, path: {tiny_model_dir}, batch_size: 2}}
datasets:
  d: {{loader: jsonl, path: texts.jsonl}}
evaluations:
  - {{id: loss, method: lm.loss, model: m, dataset: d}}
""")
    assert run_cli("run", suite, "--out", tmp_path / "run")[0] == 0
    records = {r["text"]: r for r in map(json.loads, (tmp_path / "run/records/loss.jsonl").read_text().splitlines())}
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = []
    for text in TEXTS:
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            loss = model(ids, labels=ids).loss.item()
        expected.append(loss)
        assert math.isclose(records[text]["loss"], loss, abs_tol=1e-5)
        assert math.isclose(records[text]["perplexity"], math.exp(loss), rel_tol=1e-5)
        assert records[text]["n_tokens"] == ids.shape[1] - 1
    metrics = {m["name"]: m for m in read_run(tmp_path / "run")["evaluations"][0]["metrics"]}
    assert math.isclose(metrics["loss_mean"]["value"], sum(expected) / len(expected), abs_tol=1e-5)
    assert math.isclose(metrics["loss_median"]["value"], sorted(expected)[2], abs_tol=1e-5)
    assert metrics["loss_mean"]["higher_is_worse"] is False


def test_token_id_datasets_are_scored_without_retokenizing(tiny_model_dir, tmp_path, run_cli, cache_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = [tok(t).input_ids for t in TEXTS]
    write_jsonl(tmp_path / "ids.jsonl", [{"ids": i} for i in ids])
    suite = tmp_path / "s.yaml"
    suite.write_text(f"""
memeval: 1
suite: lm
models:
  m: {{adapter: hf-causal, path: {tiny_model_dir}}}
datasets:
  d: {{loader: jsonl, path: ids.jsonl, tokens_field: ids}}
evaluations:
  - {{id: loss, method: lm.loss, model: m, dataset: d, params: {{max_tokens: 4}}}}
""")
    assert run_cli("run", suite, "--out", tmp_path / "run")[0] == 0
    records = [json.loads(x) for x in (tmp_path / "run/records/loss.jsonl").read_text().splitlines()]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    by_id = {r["id"]: r for r in records}
    for index, seq in enumerate(ids):
        cut = torch.tensor([seq[:4]])
        with torch.no_grad():
            loss = model(cut, labels=cut).loss.item()
        assert math.isclose(by_id[str(index)]["loss"], loss, abs_tol=1e-5)
