"""A run killed with SIGKILL and started again recomputes nothing it finished, and gives the
same results as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from helpers import REPO, read_run, run_memeval, write_jsonl

N_SAMPLES = 1200


@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory):
    """An untrained but wide GPT-2 (random weights, fixed seed): slow enough to kill mid-run."""
    from memeval.models.recipe import ArchitectureRecipe, save_untrained

    out = tmp_path_factory.mktemp("slow-model")
    save_untrained(out, ArchitectureRecipe(n_layer=4, n_embd=256, n_head=4, n_positions=128))
    return out


def default_sigint() -> None:
    """A shell starts background jobs with SIGINT ignored, and Python keeps an inherited SIG_IGN
    (as `nohup` relies on); give the child the default so it gets its KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def memeval(*args, cache, **kwargs):
    env = {**os.environ, "MEMEVAL_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "memeval", "run", *map(str, args), "-q"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint, **kwargs)


def cached_rows(cache) -> int:
    path = cache / "outputs.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM outputs").fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0


def loss_suite(tmp_path, model_dir, texts, ids=False):
    """A one-evaluation lm.loss suite over `texts` on `model_dir`, four sequences per batch."""
    rows = [{"id": f"s{i:05d}", "text": t} if ids else {"text": t} for i, t in enumerate(texts)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    suite = tmp_path / "s.yaml"
    id_field = ", id_field: id" if ids else ""
    suite.write_text(f"""
memeval: 1
suite: resume
models:
  m: {{adapter: hf-causal, path: {model_dir}, batch_size: 4, threads: 1}}
datasets:
  d: {{loader: jsonl, path: d.jsonl{id_field}}}
evaluations:
  - {{id: loss, method: lm.loss, model: m, dataset: d}}
""")
    return suite


def start_and_wait(suite, out, cache, rows):
    """Start a run and return it once `rows` outputs are committed (or it ended)."""
    proc = memeval(suite, "--out", out, cache=cache)
    deadline = time.time() + 120
    while cached_rows(cache) < rows and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    return proc


def records(out_dir):
    rows = [json.loads(x) for x in (out_dir / "records" / "loss.jsonl").read_text().splitlines()]
    return sorted(rows, key=lambda r: r["id"])


@pytest.mark.slow
def test_sigkill_then_rerun_recomputes_nothing_finished(tmp_path, slow_model_dir):
    texts = [f"sample {i} " + "abc def ghi " * (1 + i % 9) for i in range(N_SAMPLES)]
    suite = loss_suite(tmp_path, slow_model_dir, texts, ids=True)
    cache = tmp_path / "cache"
    victim = start_and_wait(suite, tmp_path / "killed", cache, rows=100)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    finished = cached_rows(cache)
    assert victim.returncode == -signal.SIGKILL
    assert 0 < finished < N_SAMPLES, "the kill should land mid-run"
    assert finished % 4 == 0, "whole batches are committed"

    resumed = memeval(suite, "--out", tmp_path / "resumed", cache=cache)
    assert resumed.wait() == 0, resumed.stderr.read()
    calls = read_run(tmp_path / "resumed")["evaluations"][0]["model_calls"]
    assert calls["cache_hits"] == finished
    assert calls["computed"] == N_SAMPLES - finished

    fresh = memeval(suite, "--out", tmp_path / "fresh", cache=tmp_path / "fresh-cache")
    assert fresh.wait() == 0, fresh.stderr.read()
    assert read_run(tmp_path / "fresh")["evaluations"][0]["model_calls"]["computed"] == N_SAMPLES
    assert records(tmp_path / "resumed") == records(tmp_path / "fresh")
    metrics = [read_run(tmp_path / name)["evaluations"][0]["metrics"] for name in ("resumed", "fresh")]
    assert metrics[0] == metrics[1]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_writes_an_interrupted_run_and_exits_2(tmp_path, slow_model_dir, sig):
    # Far more work than can finish before the signal lands, however fast the machine.
    texts = [f"{i} " + "abc def " * (1 + i % 7) for i in range(20 * N_SAMPLES)]
    proc = start_and_wait(loss_suite(tmp_path, slow_model_dir, texts), tmp_path / "run", tmp_path / "cache", rows=20)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 2
    run = read_run(tmp_path / "run")
    assert run["status"] == "interrupted" and run["exit_code"] == 2


def killed_when(args, cache, ready, env=None):
    """Start `memeval run ARGS`, SIGKILL it once `ready()` is true, and return it."""
    env = {**os.environ, "MEMEVAL_CACHE_DIR": str(cache), **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "memeval", "run", *map(str, args), "-q"], env=env,
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before the kill point: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc


def outcome(out_dir):
    """What a run found: its metrics and gates, and every record, in a stable order."""
    run = read_run(out_dir)
    found = [{k: e[k] for k in ("id", "status", "metrics", "gates")} for e in run["evaluations"]]
    rows = {p.name: sorted(p.read_text().splitlines()) for p in (out_dir / "records").glob("*.jsonl")}
    return (run["status"], run["exit_code"]), found, rows


@pytest.mark.slow
def test_sigkill_while_training_and_while_reporting_then_rerun_matches_a_clean_run(tiny_suite, tmp_path):
    suite = tiny_suite(extra="report: {formats: [json, html, markdown, junit]}\n")
    clean = run_memeval("run", suite, "--out", tmp_path / "clean", cache=tmp_path / "clean-cache")
    assert clean.returncode == 0, clean.stderr
    cache, recipes = tmp_path / "cache", tmp_path / "cache" / "recipes"

    def training() -> bool:
        return recipes.is_dir() and any(p.name.startswith(".") and p.is_dir() for p in recipes.iterdir())

    killed_when([suite, "--out", tmp_path / "a"], cache, training)
    assert not any(p.name == "recipe.json" for p in recipes.rglob("*")), "killed before training finished"
    rerun = run_memeval("run", suite, "--out", tmp_path / "a", cache=cache)
    assert rerun.returncode == 0, rerun.stderr
    assert outcome(tmp_path / "a") == outcome(tmp_path / "clean")

    # Reporting: a plugin holds the HTML reporter still while it builds its sections.
    (tmp_path / "hold.py").write_text(
        "import os, pathlib, time\nfrom memeval import hookimpl\n\n\n@hookimpl\n"
        "def memeval_report_sections(evaluation, records):\n"
        "    pathlib.Path(os.environ['HOLD_MARK']).touch()\n    time.sleep(120)\n")
    mark, out = tmp_path / "reporting", tmp_path / "b"
    killed_when([suite, "--out", out, "-p", "hold"], cache, mark.exists,
                env={"HOLD_MARK": str(mark), "PYTHONPATH": str(tmp_path)})
    assert (out / "records").is_dir() and not (out / "run.json").exists(), "no run.json says it completed"
    assert not (out / "report.html").exists()
    rerun = run_memeval("run", suite, "--out", out, cache=cache)
    assert rerun.returncode == 0, rerun.stderr
    assert not list(out.rglob("*.part"))
    assert outcome(out) == outcome(tmp_path / "clean")
    assert all(e["model_calls"]["computed"] == 0 for e in read_run(out)["evaluations"])
    assert (out / "report.html").read_text().rstrip().endswith("</html>")
