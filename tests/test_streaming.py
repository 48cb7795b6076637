"""Datasets streamed through the run: `reduce` reads the records back from the records file
(`Records`), a method that `prepares_in_blocks` is prepared and mapped a block of samples at a time
with its cuts added up over the blocks, and the driver's peak memory does not grow with the data."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from helpers import read_run, write_jsonl

from memeval.results import Records


def write_records(path, rows, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")


def test_records_can_be_read_again_counted_indexed_and_sliced(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [{"id": str(i), "loss": i / 3, "text": "é" * i} for i in range(7)]
    write_records(path, rows)
    records = Records(path)
    assert list(records) == rows and list(records) == rows  # iterated twice, read twice
    assert len(records) == 7
    assert records[0] == rows[0] and records[-1] == rows[-1] and records[3] == rows[3]
    assert records[2:5] == rows[2:5] and records[::3] == rows[::3]
    assert max(records, key=lambda r: r["loss"]) == rows[-1]
    assert rows[4] in records and records.index(rows[4]) == 4
    with pytest.raises(IndexError):
        records[7]


def test_records_skip_blank_lines_and_a_last_line_cut_short_and_see_what_is_appended(tmp_path):
    path = tmp_path / "r.jsonl"
    write_records(path, [{"id": "a"}], tail='\n{"id": "b"}\n{"id": "c", "lo')  # a write cut short
    records = Records(path)
    assert [r["id"] for r in records] == ["a", "b"] and len(records) == 2 and records[-1] == {"id": "b"}
    with path.open("a", encoding="utf-8") as handle:  # the write completes, another follows
        handle.write('ss": 1.5}\n{"id": "d"}\n')
    assert len(records) == 4 and records[2] == {"id": "c", "loss": 1.5} and records[3] == {"id": "d"}
    assert [r["id"] for r in records] == ["a", "b", "c", "d"]
    assert len(Records(tmp_path / "missing.jsonl")) == 0 and list(Records(None)) == []


def loss_suite(tmp_path, model_dir, texts=None, max_tokens: int | None = None, tokens=None, batch_size: int = 4):
    """An lm.loss suite over `texts`, or over token-id sequences `tokens` (no tokenizer involved)."""
    rows = ([{"id": f"s{i}", "text": t} for i, t in enumerate(texts)] if tokens is None
            else [{"id": f"s{i}", "tokens": ids} for i, ids in enumerate(tokens)])
    write_jsonl(tmp_path / "d.jsonl", rows)
    params = {"max_tokens": max_tokens} if max_tokens else {}
    data = {"loader": "jsonl", "path": "d.jsonl", "id_field": "id", **({"tokens_field": "tokens"} if tokens else {})}
    suite = {"memeval": 1, "suite": "stream", "seed": 0, "on_truncate": "warn",
             "models": {"m": {"adapter": "hf-causal", "path": str(model_dir), "batch_size": batch_size}},
             "datasets": {"d": data},
             "evaluations": [{"id": "loss", "method": "lm.loss", "model": "m", "dataset": "d", "params": params}]}
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(suite))
    return path


def test_blocks_of_samples_give_the_records_cuts_and_metrics_of_one_block(tiny_model_dir, tmp_path, run_cli,
                                                                           monkeypatch):
    import memeval.runner

    # 8-72 byte tokens (BOS and the bytes); the last has BOS alone and is skipped
    texts = [" ".join(["red fox"] * (1 + i % 9)) for i in range(40)] + [""]
    suite = loss_suite(tmp_path, tiny_model_dir, texts, max_tokens=12)
    code, _, err = run_cli("run", suite, "--out", tmp_path / "one", "--cache-dir", tmp_path / "cache", "-q")
    assert code == 0, err
    monkeypatch.setattr(memeval.runner, "BLOCK_SAMPLES", 6)
    code, _, err = run_cli("run", suite, "--out", tmp_path / "six", "--cache-dir", tmp_path / "cache", "-q")
    assert code == 0, err
    one, six = read_run(tmp_path / "one")["evaluations"][0], read_run(tmp_path / "six")["evaluations"][0]
    cut = [w for w in one["warnings"] if w.startswith("truncated")]
    assert cut == [w for w in six["warnings"] if w.startswith("truncated")]
    # the first block's longest is cut by 35 tokens, a later one's by 60
    assert cut == ["truncated: 35 of 41 sequences cut to max_tokens 12 (by up to 60 tokens)"]
    assert one["truncated"] == six["truncated"] == 35 and one["n_samples"] == six["n_samples"] == 40
    assert sum("'s40' has 1 token" in w for w in six["warnings"]) == 1

    def records(name):
        lines = (tmp_path / name / "records" / "loss.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    by_id = {r["id"]: r for r in records("one")}
    ordered = records("six")  # each block of 6 samples in its own batches, longest first, blocks in order
    assert [r["id"] for r in ordered[:6]] == ["s1", "s2", "s3", "s4", "s5", "s0"]  # 12 tokens each (cut), then 8
    assert sorted(r["id"] for r in ordered) == sorted(by_id)
    for r in ordered:
        assert r["loss"] == pytest.approx(by_id[r["id"]]["loss"], abs=1e-5)
    for mine, theirs in zip(one["metrics"], six["metrics"], strict=True):
        assert mine["name"] == theirs["name"] and mine["value"] == pytest.approx(theirs["value"], abs=1e-5)


# Runs the CLI in a fresh process and prints its own peak RSS (KiB) on the last line: VmHWM, not
# ru_maxrss, which carries the parent's peak (pytest's) into a child that `subprocess` vfork-execs.
DRIVER = """
import sys
from memeval.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print("PEAK_RSS_KB", peak, "EXIT", int(code))
"""


def peak_mb(tmp_path, model_dir, n: int) -> float:
    import datasets

    root = tmp_path / str(n)
    root.mkdir()
    rng = random.Random(0)
    suite = loss_suite(root, model_dir, tokens=[[rng.randrange(256) for _ in range(8)] for _ in range(n)],
                       batch_size=64)
    # `datasets` turns a JSON lines file into Arrow once, taking memory in proportion to the file up
    # to its block size (+35 MB for 10,000 rows of 40 ids); later runs memory-map the Arrow file.
    # Measure such a run.
    datasets.load_dataset("json", data_files={"train": [str(root / "d.jsonl")]}, split="train")
    proc = subprocess.run([sys.executable, "-c", DRIVER, "run", str(suite), "--out", str(root / "out"),
                           "--cache-dir", str(root / "cache"), "-q"], capture_output=True, text=True, timeout=600)
    last = proc.stdout.strip().splitlines()[-1].split() if proc.stdout.strip() else []
    assert len(last) == 4 and last[3] == "0", proc.stdout + proc.stderr
    assert read_run(root / "out")["evaluations"][0]["n_samples"] == n
    return int(last[1]) / 1024


@pytest.mark.slow
def test_the_drivers_peak_memory_stays_flat_as_the_data_grows_tenfold(tmp_path):
    """lm.loss over 3,000 and 30,000 sequences of token ids (a tokenizer's own buffers grow over the
    first ~20,000 texts it encodes, then stay: see benchmarks/README.md). Holding the samples, units
    and records took about 1 KB a sequence of 8 ids; streamed, the larger run's peak is within noise
    of the smaller's."""
    from memeval.models.recipe import ArchitectureRecipe, save_untrained

    model_dir = tmp_path / "model"
    save_untrained(model_dir, ArchitectureRecipe(n_layer=1, n_embd=32, n_head=2, n_positions=128))
    small, large = peak_mb(tmp_path, model_dir, 3000), peak_mb(tmp_path, model_dir, 30000)
    assert large - small < 12, f"driver peak {small:.0f} MB -> {large:.0f} MB for 10x the data"
