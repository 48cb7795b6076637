from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from helpers import (
    DESCRIPTIONS,
    PAYLOADS,
    TINY_RECIPE,
    run_memeval,
    tiny_texts,
    write_jsonl,
)

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the whole test session: recipe models are trained once and shared."""
    path = tmp_path_factory.mktemp("memeval-cache")
    os.environ["MEMEVAL_CACHE_DIR"] = str(path)
    return path


@pytest.fixture
def tiny_suite(tmp_path, cache_dir):
    """A suite dir with a small corpus and a recipe model; returns a writer for suite variants."""
    texts = tiny_texts()
    write_jsonl(tmp_path / "data" / "train.jsonl", [{"id": f"t{i}", "text": t} for i, t in enumerate(texts)])
    write_jsonl(tmp_path / "data" / "unseen.jsonl",
                [{"id": f"u{i}", "text": f"zq{i} wx vb {i * 7}"} for i in range(12)])

    def write(evaluations: str | None = None, name: str = "suite.yaml", extra: str = "") -> Path:
        evaluations = evaluations or """
          - id: train-loss
            method: lm.loss
            model: tiny
            dataset: train
            gates:
              - {metric: loss_mean, max: 100}
        """
        body = textwrap.dedent(f"""\
            memeval: 1
            suite: tiny
            seed: 0
            datasets:
              train: {{loader: jsonl, path: data/train.jsonl, id_field: id}}
              unseen: {{loader: jsonl, path: data/unseen.jsonl, id_field: id}}
            models:
              tiny: {json.dumps(TINY_RECIPE)}
            evaluations:
            """) + textwrap.indent(textwrap.dedent(evaluations).strip("\n"), "  ") + "\n" + textwrap.dedent(extra)
        path = tmp_path / name
        path.write_text(body, encoding="utf-8")
        return path

    return write


@pytest.fixture
def run_cli(capsys):
    """Run the memeval CLI in-process; returns (exit code, stdout, stderr)."""
    from memeval.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2-style checkpoint trained by the recipe code (an ordinary HF directory)."""
    from memeval.models.recipe import RecipeParams, train

    params = RecipeParams.model_validate({k: v for k, v in TINY_RECIPE.items() if k != "adapter"})
    out = tmp_path_factory.mktemp("tiny-model")
    train(params, tiny_texts(), seed=0, out=out)
    return out


@pytest.fixture
def hf_model(tiny_model_dir, tmp_path):
    """The tiny checkpoint behind the hf-causal adapter."""
    from memeval.cache import OutputCache
    from memeval.models import AdapterContext, HFCausal

    cache = OutputCache(tmp_path / "cache")
    context = AdapterContext(base_dir=tmp_path, seed=0, cache=cache, cache_dir=tmp_path / "cache",
                             load_dataset=lambda name: [])
    return HFCausal(HFCausal.Params(path=str(tiny_model_dir), batch_size=4), context)


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory, cache_dir) -> Path:
    """The shipped quickstart suite, run once per test session (trains its two models, ~70 s cold)."""
    out = tmp_path_factory.mktemp("quickstart") / "run"
    proc = run_memeval("run", "suites/quickstart.yaml", "--out", out, "-q", cache=cache_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture
def payload_suite(tmp_path, cache_dir):
    """A suite whose data, ids and descriptions are XSS / template / Markdown payloads, run on a tiny
    recipe model trained on them (so its generations carry payload characters too). Returns a
    writer taking `redact` (bool)."""
    texts = [f"note {i}: {p} end" for i in range(6) for p in PAYLOADS]
    write_jsonl(tmp_path / "data" / "train.jsonl", [{"id": f"t{i}<b>", "text": t} for i, t in enumerate(texts)])
    split = [{"id": f"s{i}\"'><i>", "prefix": f"note {i}: ", "suffix": p}
             for i, p in enumerate(PAYLOADS)]
    write_jsonl(tmp_path / "data" / "split.jsonl", split)
    write_jsonl(tmp_path / "data" / "other.jsonl",
                [{"id": f"o{i}", "text": f"other {i}: {p[::-1]}"} for i, p in enumerate(PAYLOADS)])
    recipe = {**TINY_RECIPE, "architecture": {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 64},
              "training": {"epochs": 40, "batch_size": 8, "learning_rate": 0.01}}

    def write(redact: bool = False) -> Path:
        suite = {
            "memeval": 1, "suite": "payloads", "description": DESCRIPTIONS[0],
            "datasets": {"train": {"loader": "jsonl", "path": "data/train.jsonl", "id_field": "id"},
                         "split": {"loader": "jsonl", "path": "data/split.jsonl", "id_field": "id",
                                   "prefix_field": "prefix", "suffix_field": "suffix"},
                         "other": {"loader": "jsonl", "path": "data/other.jsonl", "id_field": "id"}},
            "models": {"tiny": recipe},
            "evaluations": [
                {"id": "loss", "method": "lm.loss", "model": "tiny", "dataset": "train",
                 "description": DESCRIPTIONS[1], "gates": [{"metric": "loss_mean", "max": 0.0}]},
                {"id": "extract", "method": "extraction.discoverable", "model": "tiny", "dataset": "split",
                 "params": {"prefix_tokens": 8, "suffix_tokens": 12}},
                {"id": "members", "method": "membership.attack", "model": "tiny", "dataset": "train",
                 "params": {"non_members": "other", "blind_baseline": False}},
            ],
            "report": {"json": True, "html": True, "markdown": True, "junit": True, "redact": redact},
            "on_truncate": "warn",  # the payload suffixes are longer than the 12 tokens measured
        }
        path = tmp_path / f"payloads-{redact}.yaml"
        path.write_text(json.dumps(suite), encoding="utf-8")  # JSON is YAML
        return path

    return write
