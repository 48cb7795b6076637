"""What the tests share besides fixtures: paths, the tiny recipe, data writers, the CLI in a
subprocess, and the hostile payloads. Import it as `from helpers import ...`: pytest puts tests/,
the directory of tests/conftest.py (no `__init__.py`), on sys.path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TINY_RECIPE = {
    "adapter": "recipe",
    "dataset": "train",
    "tokenizer": {"kind": "bytes"},
    "architecture": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64},
    "training": {"epochs": 4, "batch_size": 8, "learning_rate": 0.01},
    "batch_size": 4,
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_texts(n: int = 40) -> list[str]:
    words = ["red", "fox", "jumps", "over", "the", "lazy", "dog", "and", "cat", "runs"]
    return [" ".join(words[(i * 3 + k + i // 10) % len(words)] for k in range(4 + i % 7)) for i in range(n)]


def read_run(out_dir: Path) -> dict:
    return json.loads((out_dir / "run.json").read_text())


def run_memeval(*args, cache: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m memeval ARGS` in a subprocess, from the repository root."""
    env = {**os.environ, "MEMEVAL_CACHE_DIR": str(cache), **(env or {})}
    return subprocess.run([sys.executable, "-m", "memeval", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600, cwd=REPO)


# Strings a hostile training set (or a model that learned one) could put in front of a reviewer.
PAYLOADS = [
    "<script>alert('xss-1')</script>",
    "<img src=x onerror=alert('xss-2')>",
    "\"><svg onload=alert('xss-3')>",
    "javascript:alert('xss-4')",
    "{{ 7*7 }} {% raw %}",
    "</style></table><iframe src=https://evil.example/>",
    "| md | [link](https://evil.example) **bold** <b>b</b>",
]
# Suite and evaluation descriptions: written by a person, but rendered just as carefully.
DESCRIPTIONS = ["<b onmouseover=alert('desc-1')>described</b> {{ 7*7 }}", "<img src=y onerror=alert('desc-2')>"]
