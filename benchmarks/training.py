"""Classifier training speed: the `classifier` recipe (memeval.train) vs. a plain hand-written torch
loop on the same model, data, noisy labels, optimizer, batches and epochs, as a ratio.

The recipe's side is the whole cached build into an empty cache directory: loading the source,
injecting the noise, hashing, training with its per-example log (loss and prediction of every
training example per epoch), test predictions per epoch, checkpoints, and writing everything to
disk. The plain loop only trains. Both start from the same seed, so they train the same weights;
the final weights are checked equal (to float tolerance). Each side runs `--repeats` times,
alternating, and the fastest run of each is compared (the machine may be shared).

Measured (2 cores shared with other jobs, load average 4-6, torch 2.13.0 CPU, best of 5, digits,
MLP 256-256, 40% symmetric noise, 1 thread), harness = recipe / (plain loop + test predictions):
full batch, 150 epochs, Adam 0.01: plain 3.35 s wall / 1.91 s CPU, plain+test 3.47 / 2.20, recipe
3.59 / 2.29: harness 1.033 wall, 1.044 CPU; the per-epoch test pass itself costs 1.04-1.15x.
Batch 128, 100 epochs, Adam 0.003: harness 0.960 wall, 0.970 CPU. Weights identical (max |dw| 0).
Two threads on the same machine: plain loop 15.4 s wall (4.6x slower than one thread), so one
thread is the default.

    .venv/bin/python benchmarks/training.py [--source digits] [--hidden 256 256] [--epochs 300]
        [--batch-size 0] [--threads 1 2] [--repeats 3] [--trainer standard]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from memeval.train.architectures import build_model  # noqa: E402
from memeval.train.classifier import (  # noqa: E402
    ClassifierParams,
    Threads,
    TrainedClassifier,
    build_classifier,
    make_noise,
)
from memeval.train.sources import load_source  # noqa: E402


def plain_loop(params: ClassifierParams, seed: int, test: bool = False) -> tuple[torch.nn.Module, Clock]:
    """The baseline: a textbook torch training loop. With `test`, it also predicts the test set at
    the epochs where the recipe logs test predictions (as PyTorch's MNIST example tests after every
    epoch); without, it only trains. Data loading and noise are outside the timed part (the
    recipe's side pays for them)."""
    data = load_source(params.source)
    noisy = make_noise(params, data, seed)
    x, y, x_test = torch.tensor(data.x_train), torch.tensor(noisy.labels), torch.tensor(data.x_test)
    opts, test_epochs = params.optimizer, params.test_epochs() if test else frozenset()
    with Threads(params.threads):
        clock = Clock()
        torch.manual_seed(seed)
        model = build_model(params.architecture, data.input_shape, data.num_classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
        generator = torch.Generator().manual_seed(seed)
        for epoch in range(1, opts.epochs + 1):
            model.train()
            full = not opts.batch_size or opts.batch_size >= len(y)
            for idx in [slice(None)] if full else torch.randperm(len(y), generator=generator).split(opts.batch_size):
                loss = F.cross_entropy(model(x[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if epoch in test_epochs:
                model.eval()
                with torch.inference_mode():
                    model(x_test).argmax(1)
        return model, clock.stop()


def recipe(params: ClassifierParams, seed: int) -> tuple[TrainedClassifier, Clock]:
    with tempfile.TemporaryDirectory() as tmp:
        clock = Clock()
        built = build_classifier(params, Path(tmp), seed)
        seconds = clock.stop()
        trained = TrainedClassifier(built.directory)
        _ = trained.networks  # load before the directory goes
        return trained, seconds


class Clock:
    """Wall and process CPU seconds since creation (CPU time is what a busy shared machine
    disturbs least)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> Clock:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return self


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest absolute difference between two models' parameters."""
    return max(float((p - q).abs().max()) for p, q in zip(a.state_dict().values(), b.state_dict().values(),
                                                          strict=True))


def compare(params: ClassifierParams, seed: int, repeats: int) -> dict[str, float]:
    warm = params.model_copy(update={"optimizer": params.optimizer.model_copy(update={"epochs": 2})})
    plain_loop(warm, seed)  # lazy imports (scikit-learn, torch.optim's first step) before any timing
    recipe(warm, seed)
    clocks: dict[str, list[Clock]] = {"plain": [], "plain_test": [], "recipe": []}
    for _ in range(repeats):  # alternate, so a busy moment of a shared machine hits all three alike
        model, clock = plain_loop(params, seed)
        clocks["plain"].append(clock)
        clocks["plain_test"].append(plain_loop(params, seed, test=True)[1])
        trained, clock = recipe(params, seed)
        clocks["recipe"].append(clock)
    diff = same_weights(model, trained.networks["net"])
    assert diff < 1e-3, f"the recipe and the plain loop trained different weights (max diff {diff})"
    best = {f"{k}_{kind}": min(getattr(c, kind) for c in v) for k, v in clocks.items() for kind in ("wall", "cpu")}
    return {**best, "max_weight_diff": diff, "memorization_rate": trained.summary["final"]["memorization_rate"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", default="digits", choices=["digits", "mnist"])
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=0, help="0: full batch")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--test-every", type=int, nargs="+", default=[1, 10],
                        help="the recipe's test_every (test predictions logged every N epochs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{args.source} (train_limit {args.train_limit}), MLP {args.hidden}, {args.epochs} epochs, "
          f"batch {args.batch_size or 'full'}, Adam lr {args.lr}, 40% symmetric noise, torch {torch.__version__}, "
          f"best of {args.repeats}")
    print("plain: train only; +test: also predicts the test set where the recipe logs it; recipe: the whole "
          "cached build; harness = recipe / (plain+test); test cost = (plain+test) / plain; best of each, "
          "wall seconds and process CPU seconds")
    print(f"{'threads':>7} {'test_every':>10} {'plain':>13} {'plain+test':>13} {'recipe':>13} {'harness':>13} "
          f"{'test cost':>13} {'memorized':>9} {'max |dw|':>9}")
    print(f"{'':>18}" + "   wall    cpu" * 5)
    for threads in args.threads:
        for test_every in args.test_every:
            params = ClassifierParams.model_validate({
                "source": {"kind": args.source, "train_limit": args.train_limit},
                "architecture": {"kind": "mlp", "hidden": args.hidden},
                "noise": {"kind": "symmetric", "rate": 0.4}, "trainer": "standard",
                "optimizer": {"name": "adam", "lr": args.lr, "epochs": args.epochs,
                              "batch_size": args.batch_size or None},
                "threads": threads, "test_every": test_every,
            })
            r = compare(params, args.seed, args.repeats)
            cells = [(r[f"{k}_wall"], r[f"{k}_cpu"]) for k in ("plain", "plain_test", "recipe")]
            ratios = [(r[f"recipe_{c}"] / r[f"plain_test_{c}"], r[f"plain_test_{c}"] / r[f"plain_{c}"])
                      for c in ("wall", "cpu")]
            print(f"{threads:>7} {test_every:>10} " + "".join(f" {w:6.2f} {c:6.2f}" for w, c in cells)
                  + f" {ratios[0][0]:6.3f} {ratios[1][0]:6.3f} {ratios[0][1]:6.3f} {ratios[1][1]:6.3f}"
                  + f" {r['memorization_rate']:9.3f} {r['max_weight_diff']:9.2e}", flush=True)


if __name__ == "__main__":
    main()
