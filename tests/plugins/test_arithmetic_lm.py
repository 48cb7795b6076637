"""arithmetic.extrapolation against a causal LM: a decoder-only `recipe` trained on the text
rendering of 3-bit addition with the recipe's stop-on-fit rule (a low threshold, so it fires
in seconds), asked through the default prompt
and through a decimal text template; answers checked against transformers' own greedy `generate`."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
import torch

SUITE = """
memeval: 1
suite: arithmetic-lm
seed: 0
datasets:
  train: {loader: arithmetic, path: add, config: "bits=3, holdout=random", split: train,
          prefix_field: prompt, suffix_field: target}
  all: {loader: arithmetic, path: add, config: "bits=3, holdout=random", split: all,
        prefix_field: prompt, suffix_field: target}
models:
  lm:
    adapter: recipe
    dataset: train
    tokenizer: {kind: bytes}
    architecture: {n_layer: 2, n_embd: 64, n_head: 4, n_positions: 40}
    training: {epochs: 150, batch_size: 8, learning_rate: 0.002, stop_when: {train_sequence_accuracy: 0.5}}
    batch_size: 64
evaluations:
  - {id: bits, method: arithmetic.extrapolation, model: lm, dataset: all}
  - id: decimal
    method: arithmetic.extrapolation
    model: lm
    dataset: all
    params: {template: "{a} plus {b} is", answer: decimal, max_new_tokens: 4}
report: {formats: [json]}
"""


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    from memeval.cli import main

    root = tmp_path_factory.mktemp("arithmetic-lm")
    (root / "suite.yaml").write_text(SUITE)
    code = main(
        [
            "run",
            str(root / "suite.yaml"),
            "--out",
            str(root / "run"),
            "--cache-dir",
            str(root / "cache"),
            "-q",
        ]
    )
    run = json.loads((root / "run" / "run.json").read_text())
    evaluations = {e["id"]: e for e in run["evaluations"]}
    records = {
        name: [json.loads(line) for line in (root / "run" / e["records_path"]).open()]
        for name, e in evaluations.items()
    }
    return code, run, evaluations, records


@functools.cache
def hf_model(path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


def hf_greedy(path: str, texts: list[str], new_tokens: int) -> list[str]:
    tokenizer, model = hf_model(path)
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            generated = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=None,
            )
            out.append(tokenizer.decode(generated[0, ids.shape[1] :]))
    return out


@pytest.mark.slow
def test_recipe_stops_on_fit_and_its_answers_are_transformers_greedy_answers(lm_run):
    code, run, evaluations, records = lm_run
    assert code == 0
    model = run["models"]["lm"]
    saved = json.loads((Path(model["path"]) / "recipe.json").read_text())
    log = saved["log"]
    fits = [e["train_sequence_accuracy"] for e in log]
    assert all(f < 0.5 for f in fits[:-1])  # it stopped at the first epoch that fit
    assert fits[-1] >= 0.5 and len(log) < 150
    assert model["training"]["epochs"] == len(log)
    bits = records["bits"]
    answers = hf_greedy(model["path"], [prompt_of(r) for r in bits[:16]], 6)
    predictions = [re.match(r"\s*([01]*)", a).group(1)[:4] for a in answers]
    assert [r["prediction"] for r in bits[:16]] == predictions
    train = [r for r in bits if not r["held_out"]]
    found = {m["name"]: m["value"] for m in evaluations["bits"]["metrics"]}
    assert found["train_sequence_accuracy"] == pytest.approx(
        fits[-1]
    )  # teacher-forced fit == greedy
    assert found["train_sequence_accuracy"] == pytest.approx(
        sum(r["prediction"] == r["target"] for r in train) / len(train)
    )


@pytest.mark.slow
def test_a_text_template_renders_decimal_prompts_and_reads_decimal_answers(lm_run):
    _, run, evaluations, records = lm_run
    chosen = records["decimal"][:16]
    assert all(r["target"] == str(r["a"] + r["b"]) for r in records["decimal"])
    answers = hf_greedy(
        run["models"]["lm"]["path"], [f"{r['a']} plus {r['b']} is" for r in chosen], 4
    )
    assert [r["prediction"] for r in chosen] == [re.match(r"\s*(\d*)", a).group(1) for a in answers]
    found = {m["name"]: m["value"] for m in evaluations["decimal"]["metrics"]}
    held = [r for r in records["decimal"] if r["held_out"]]
    assert found["heldout_sequence_accuracy"] == pytest.approx(
        sum(r["sequence_correct"] for r in held) / len(held)
    )
    assert "chance_sequence_accuracy" not in found


def prompt_of(record: dict) -> str:
    """The loader's prompt, rebuilt independently: 3 bits LSB first, '+', 3 bits, '='."""
    return f"{format(record['a'], '03b')[::-1]}+{format(record['b'], '03b')[::-1]}="
