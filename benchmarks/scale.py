"""Scale: the local executor vs. `--executor ray` on the same suite and data, and the driver's peak
memory as the dataset grows 10x.

The suite scores every sequence with `lm.loss` under a randomly initialised byte-level GPT-2 (speed
does not depend on the weights). Each (executor, size) runs `memeval run` in a fresh process with
a fresh output cache, so nothing is replayed; that process reports its own peak RSS (the driver's:
Ray's workers are other processes), as VmHWM of /proc/self/status: `ru_maxrss` of RUSAGE_SELF is
no measure of it on Linux, as `subprocess` starts the run with vfork + exec and the kernel carries
the parent's peak (this script's, which converts the data) into the child's `ru_maxrss`. Ray runs
on a local cluster of `--cpus` CPUs started and shut down by the run itself, so its numbers include
the cluster's start and the actor pool's; the evaluation's own seconds (run.json) are reported too.
The records of both executors are checked identical.

The data file is turned into Arrow (by `datasets`, once per file, which takes memory in proportion
to the file up to its block size) before the runs, so every run measures what a run over an
already-converted dataset holds. `--token-ids` gives the data as token ids (random bytes), so the
driver runs no tokenizer. Each (executor, size) runs `--repeats` times, interleaved, and the summary
gives medians and ranges: one run's peak varies by up to ~20 MB with where the allocator put torch's
per-batch tensors.

    .venv/bin/python benchmarks/scale.py [--sizes 2000 20000] [--executors local ray] [--token-ids]
        [--repeats 3] [--cpus 2] [--tokens 64] [--layers 2] [--width 128] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from",
         "river", "stone", "market", "winter", "garden", "letter", "engine", "violet", "harbor", "signal"]

# Runs the CLI in this process and prints the process's own peak RSS (KiB) on the last line: VmHWM, the
# peak of this process image only (ru_maxrss would include the parent's peak, see above; it is the
# fallback where there is no /proc, e.g. macOS, where it is in bytes and the vfork caveat may differ).
DRIVER = """
import resource, sys
from memeval.cli import main
code = main(sys.argv[1:])
try:
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
print("PEAK_RSS_KB", peak, "EXIT", int(code))
"""


def write_data(path: Path, n: int, chars: int, token_ids: bool, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            if token_ids:
                out.write(json.dumps({"id": f"s{i}", "tokens": [rng.randrange(256) for _ in range(chars + 1)]}) + "\n")
                continue
            words: list[str] = []
            while sum(len(w) + 1 for w in words) < chars:
                words.append(rng.choice(WORDS))
            out.write(json.dumps({"id": f"s{i}", "text": " ".join(words)[:chars]}) + "\n")
    import datasets  # the one-off conversion to Arrow, before the measured runs

    datasets.disable_progress_bars()
    datasets.load_dataset("json", data_files={"train": [str(path)]}, split="train")


def write_suite(root: Path, model_dir: Path, data: Path, batch_size: int, token_ids: bool) -> Path:
    dataset = {"loader": "jsonl", "path": str(data), "id_field": "id", **({"tokens_field": "tokens"} if token_ids else {})}
    suite = {"memeval": 1, "suite": "scale", "seed": 0,
             "models": {"lm": {"adapter": "hf-causal", "path": str(model_dir), "batch_size": batch_size,
                               "threads": 1}},
             "datasets": {"texts": dataset},
             "evaluations": [{"id": "loss", "method": "lm.loss", "model": "lm", "dataset": "texts"}]}
    path = root / f"{data.stem}.yaml"
    path.write_text(json.dumps(suite))
    return path


def run(suite: Path, out: Path, cache: Path, executor: str, cpus: int) -> dict:
    args = ["run", str(suite), "--out", str(out), "--cache-dir", str(cache), "-q", "--executor", executor]
    if executor == "ray":
        args += ["--ray-cpus", str(cpus)]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    last = proc.stdout.strip().splitlines()[-1].split() if proc.stdout.strip() else []
    if len(last) != 4 or last[3] != "0":
        raise SystemExit(f"{executor} run failed:\n{proc.stdout}\n{proc.stderr}")
    evaluation = json.loads((out / "run.json").read_text())["evaluations"][0]
    return {"wall": wall, "seconds": evaluation["seconds"], "n": evaluation["n_samples"],
            "peak_mb": int(last[1]) / 1024, "records": (out / "records" / "loss.jsonl").read_bytes()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--tokens", type=int, default=64, help="bytes (= tokens) per sequence")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--executors", nargs="+", choices=("local", "ray"), default=["local", "ray"])
    parser.add_argument("--token-ids", action="store_true", help="token-id data: no tokenizer in the driver")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (executor, size), interleaved")
    args = parser.parse_args()

    from memeval.models.recipe import ArchitectureRecipe, save_untrained

    with tempfile.TemporaryDirectory(prefix="memeval-scale-") as tmp:
        root = Path(tmp)
        model_dir = root / "model"
        save_untrained(model_dir, ArchitectureRecipe(n_layer=args.layers, n_embd=args.width, n_head=4,
                                                     n_positions=max(128, args.tokens + 8)))
        print(f"lm.loss, GPT-2 {args.layers} x {args.width} (random weights, bytes), {args.tokens} tokens per "
              f"sequence{' (token ids)' if args.token_ids else ' (text)'}, batch {args.batch_size}, 1 torch thread "
              f"per process; Ray: local cluster of {args.cpus} CPUs; {args.repeats} runs each", flush=True)
        print(f"{'executor':>8} {'sequences':>9} {'run':>3} {'wall s':>8} {'eval s':>8} {'seq/s (eval)':>12} "
              f"{'driver peak MB':>14}", flush=True)
        suites = {}
        for n in args.sizes:
            data = root / f"texts-{n}.jsonl"
            write_data(data, n, args.tokens - 1, args.token_ids)  # + BOS
            suites[n] = write_suite(root, model_dir, data, args.batch_size, args.token_ids)
        rows: dict[tuple[str, int], list[dict]] = {}
        for repeat in range(args.repeats):
            for n in args.sizes:
                for executor in args.executors:
                    where = root / f"{executor}-{n}-{repeat}"
                    result = run(suites[n], where / "out", where / "cache", executor, args.cpus)
                    rows.setdefault((executor, n), []).append(result)
                    print(f"{executor:>8} {n:>9} {repeat + 1:>3} {result['wall']:>8.1f} {result['seconds']:>8.1f} "
                          f"{n / result['seconds']:>12.0f} {result['peak_mb']:>14.0f}", flush=True)
                if len({result["records"] for executor in args.executors for result in rows[executor, n]}) != 1:
                    raise SystemExit(f"records differ between runs or executors at {n} sequences")
        print("records identical between runs and executors at every size")
        summarize(rows, args.sizes, args.executors)


def summarize(rows: dict[tuple[str, int], list[dict]], sizes: list[int], executors: list[str]) -> None:
    """Medians (range) of each (executor, size), and the growth of the median driver peak."""
    def median(values: list[float]) -> float:
        return statistics.median(values)

    for executor in executors:
        cells = []
        for n in sizes:
            peaks = [r["peak_mb"] for r in rows[executor, n]]
            rate = median([n / r["seconds"] for r in rows[executor, n]])
            cells.append(f"{n}: peak {median(peaks):.0f} MB ({min(peaks):.0f}-{max(peaks):.0f}), {rate:.0f} seq/s")
        small, large = min(sizes), max(sizes)
        grow = median([r["peak_mb"] for r in rows[executor, large]]) - median([r["peak_mb"] for r in rows[executor, small]])
        print(f"{executor}: " + "; ".join(cells) + f"; median peak {grow:+.0f} MB for {large / small:g}x the data")


if __name__ == "__main__":
    main()
