"""The classifier recipe: data source + label noise + architecture + trainer + optimizer + seed,
trained once and cached by the hash of all of these.

`build_classifier(params, cache_dir, seed)` returns the directory of the trained model, training it
first when no cache holds it. Training writes into a temporary directory beside the final one and
renames it into place with the checksums of its files (`files.build_once`); a lock file serialises
two processes building the same recipe (the second waits, then finds the first's result), and a
directory whose files fail their checksums is trained again, never used. The directory holds:

- `summary.json`: the recipe, its hash, the seed, shapes, noise counts, the trainer's networks,
  timings, checkpoint epochs and the final label-noise metrics;
- `weights.pt`: {network: state_dict} of the trained networks;
- `checkpoints/epoch-NNNN.pt`: {network: state_dict} at each checkpoint epoch (0 is the
  initialisation; the last epoch is always kept);
- `log.npz`: the training log (see `trainers.TrainingLog`);
- `labels.npz`: clean and noisy training labels, the noise mask, the clean test labels. The clean
  labels are stored for measurement only; the trainer never sees them.

`TrainedClassifier(directory)` loads it: logits, penultimate features, parameters by layer,
checkpoints, the training log, the labels, and the data again from the source.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, ValidationError, model_validator
from torch import nn

from memeval.errors import UsageError, did_you_mean
from memeval.files import build_once
from memeval.suite import Strict
from memeval.threads import TorchThreads
from memeval.train.architectures import (
    ArchitectureParams,
    MLPArchitecture,
    architecture_identity,
    build_model,
    layer_parameters,
    penultimate,
)
from memeval.train.metrics import LabelSet, final_metrics
from memeval.train.noise import DIGIT_FLIPS, NoisyLabels, apply_noise
from memeval.train.sources import ClassificationData, DigitsSource, SourceParams, load_source
from memeval.train.trainers import (
    BUILTIN_TRAINERS,
    EpochState,
    OptimizerParams,
    TrainData,
    Trainer,
    TrainerCallback,
    TrainingLog,
    TrainJob,
    TrainResult,
    sum_logits,
)

CLASSIFIER_FORMAT = 1  # bump when training or storage changes in a way that should retrain cached models
DEFAULT_CHECKPOINTS = 20


class NoiseParams(Strict):
    kind: Literal["none", "symmetric", "asymmetric"] = Field("none", description=(
        "symmetric: flipped uniformly to another class; asymmetric: along the class pairs"))
    rate: float = Field(0.0, ge=0, le=1, description="share of training labels flipped (exactly round(rate x n))")
    pairs: dict[int, int] | None = Field(None, description="asymmetric only: source class -> noisy class; "
                                                           "default the digit flips 2->7, 3->8, 5<->6, 7->1")

    @model_validator(mode="after")
    def _pairs_only_asymmetric(self) -> NoiseParams:
        if self.pairs is not None and self.kind != "asymmetric":
            raise ValueError("pairs is for asymmetric noise only")
        return self

    def flips(self) -> dict[int, int]:
        return dict(self.pairs if self.pairs is not None else DIGIT_FLIPS)


class ClassifierParams(Strict):
    source: SourceParams = Field(default_factory=DigitsSource, description="the data: digits, mnist or hf")
    architecture: ArchitectureParams = Field(default_factory=MLPArchitecture, description="mlp, cnn or factory")
    noise: NoiseParams = Field(default_factory=NoiseParams, description="label noise injected into the training set")
    trainer: str = Field("standard", description="training method (a registered trainer)")
    trainer_params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="settings per trainer name; "
                                                      "only the chosen trainer's are used (so a matrix over "
                                                      "`trainer` can keep them all)")
    optimizer: OptimizerParams = Field(default_factory=OptimizerParams, description="optimizer, epochs and batches")
    seed: int | None = Field(None, ge=0, lt=2**32, description="training and noise seed; none: the suite's")
    threads: int = Field(1, ge=1, description="torch threads while training (part of the hash: another count can "
                                              "give other weights)")
    checkpoint_every: int | None = Field(None, ge=1, description="keep a checkpoint every N epochs (and the "
                                                                 f"last); none: about {DEFAULT_CHECKPOINTS}")

    test_every: int = Field(1, ge=1, description="log the test predictions every N epochs (and at the last); "
                                                 "1: every epoch")

    def test_epochs(self) -> frozenset[int]:
        epochs = self.optimizer.epochs
        return frozenset({*range(self.test_every, epochs + 1, self.test_every), epochs})

    def checkpoint_epochs(self) -> frozenset[int]:
        epochs = self.optimizer.epochs
        every = self.checkpoint_every or max(1, -(-epochs // DEFAULT_CHECKPOINTS))
        return frozenset({0, *range(every, epochs + 1, every), epochs})


def resolve_trainer(params: ClassifierParams, trainers: Mapping[str, type[Trainer]]) -> Trainer:
    """The chosen trainer with its validated settings; unknown names and settings are UsageErrors."""
    cls = trainers.get(params.trainer)
    if cls is None:
        raise UsageError(f"unknown trainer {params.trainer!r}{did_you_mean(params.trainer, trainers)}; "
                         f"known: {', '.join(sorted(trainers))}", field="trainer")
    for name, settings in params.trainer_params.items():
        if name not in trainers:
            raise UsageError(f"trainer_params names an unknown trainer {name!r}{did_you_mean(name, trainers)}",
                             field="trainer_params")
        try:
            trainers[name].Params.model_validate(settings)
        except ValidationError as exc:
            raise UsageError(f"settings of trainer {name!r}: {exc}", field=f"trainer_params.{name}") from exc
    return cls(cls.Params.model_validate(params.trainer_params.get(params.trainer, {})))


def recipe_hash(params: ClassifierParams, trainer: Trainer, data: ClassificationData, seed: int) -> str:
    """Hash of everything that shapes the trained model and its log."""
    shaped = {
        "source": params.source.model_dump(), "data": data.fingerprint(),
        "architecture": architecture_identity(params.architecture), "noise": params.noise.model_dump(),
        "trainer": trainer.name, "trainer_params": trainer.params.model_dump(),
        "optimizer": params.optimizer.model_dump(), "seed": seed, "threads": params.threads,
        "checkpoints": sorted(params.checkpoint_epochs()), "test_every": params.test_every, "torch": torch.__version__.split("+")[0],
    }
    blob = json.dumps([CLASSIFIER_FORMAT, shaped], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def make_noise(params: ClassifierParams, data: ClassificationData, seed: int) -> NoisyLabels:
    noise = params.noise
    return apply_noise(data.y_train, noise.kind, noise.rate, data.num_classes, seed,
                       noise.flips() if noise.kind == "asymmetric" else None)


@dataclass
class Built:
    directory: Path
    trained: bool  # False when the cache already held it


def build_classifier(params: ClassifierParams, cache_dir: Path, seed: int,
                     trainers: Mapping[str, type[Trainer]] | None = None, base_dir: Path | None = None,
                     log: Callable[[str], None] = lambda message: None,
                     before_training: Callable[[str], None] | None = None) -> Built:
    """The directory of the model `params` makes, training it when no cache holds it.
    `before_training(key)` runs just before training (the adapter's cache-mode check)."""
    seed = params.seed if params.seed is not None else seed
    trainer = resolve_trainer(params, trainers if trainers is not None else BUILTIN_TRAINERS)
    data = load_source(params.source, base_dir)
    key = recipe_hash(params, trainer, data, seed)
    final = Path(cache_dir) / "classifiers" / key

    def build(work: Path) -> None:
        log(f"training classifier {key} ({trainer.name}, {params.optimizer.epochs} epochs, "
            f"{len(data.y_train)} examples)")
        train_into(work, params, trainer, data, seed, key, progress=EpochProgress(params.optimizer.epochs, log))

    before = (lambda: before_training(key)) if before_training is not None else None
    return Built(final, build_once(final, build, log, before))


def run_training(params: ClassifierParams, trainer: Trainer, data: ClassificationData, noisy: NoisyLabels,
                 seed: int, callbacks: tuple[Any, ...] = ()) -> TrainResult:
    """Train (no caching): what `build_classifier` stores, and what tests and benchmarks can call."""
    tensors = TrainData(torch.tensor(data.x_train), torch.tensor(noisy.labels), torch.tensor(data.x_test),
                        data.num_classes)  # copies: source arrays are shared and read-only

    def factory() -> nn.Module:
        return build_model(params.architecture, data.input_shape, data.num_classes)

    job = TrainJob(factory, tensors, params.optimizer, seed, params.checkpoint_epochs(), callbacks,
                   params.noise.rate if params.noise.kind != "none" else 0.0, params.test_epochs())
    with TorchThreads(params.threads):
        return trainer.train(job)


class EpochProgress(TrainerCallback):
    """Logs about ten lines over a training run: epoch, mean training loss (against the noisy
    labels), seconds. It only observes, so training is the same with or without it."""

    def __init__(self, epochs: int, log: Callable[[str], None]):
        self.epochs, self.log = epochs, log
        self.every = max(1, -(-epochs // 10))
        self.started = time.perf_counter()

    def on_epoch_end(self, state: EpochState) -> None:
        if state.epoch % self.every and state.epoch != self.epochs:
            return
        loss = float(np.nanmean(state.log.loss[state.epoch - 1]))
        self.log(f"  epoch {state.epoch}/{self.epochs}: training loss {loss:.4f} "
                 f"({time.perf_counter() - self.started:.1f} s so far)")


def train_into(out: Path, params: ClassifierParams, trainer: Trainer, data: ClassificationData, seed: int,
               key: str, progress: TrainerCallback | None = None) -> None:
    noisy = make_noise(params, data, seed)
    started = time.perf_counter()
    result = run_training(params, trainer, data, noisy, seed, callbacks=(progress,) if progress else ())
    seconds = time.perf_counter() - started
    torch.save({k: v.state_dict() for k, v in result.networks.items()}, out / "weights.pt")
    (out / "checkpoints").mkdir()
    for epoch, states in sorted(result.checkpoints.items()):
        torch.save(states, out / "checkpoints" / f"epoch-{epoch:04d}.pt")
    np.savez(out / "log.npz", **result.log.arrays())  # uncompressed: floats barely compress, and it is faster
    labels = LabelSet(data.y_train, noisy.labels, noisy.mask, data.y_test)
    np.savez_compressed(out / "labels.npz", **labels.arrays())
    summary = {
        "format": CLASSIFIER_FORMAT, "key": key, "params": params.model_dump(mode="json"), "seed": seed,
        "trainer": {"name": trainer.name, "params": trainer.params.model_dump(mode="json"),
                    "networks": list(trainer.networks), "predict_with": list(trainer.predict_with)},
        "data_fingerprint": data.fingerprint(), "input_shape": list(data.input_shape), "num_classes": data.num_classes, "class_names": data.class_names,
        "n_train": len(data.y_train), "n_test": len(data.y_test), "noisy": noisy.flipped,
        "noise_share": noisy.flipped / max(1, len(noisy.mask)), "epochs": params.optimizer.epochs,
        "checkpoint_epochs": sorted(result.checkpoints), "train_seconds": seconds,
        "torch_threads": params.threads, "info": result.info,
        "final": final_metrics(result.log, labels),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))


class TrainedClassifier:
    """A trained classifier recipe, loaded from its cache directory."""

    def __init__(self, directory: Path, threads: int | None = 1, base_dir: Path | None = None):
        self.directory = Path(directory)
        path = self.directory / "summary.json"
        if not path.exists():
            raise UsageError(f"{self.directory} is not a trained classifier (no summary.json)")
        self.summary: dict[str, Any] = json.loads(path.read_text())
        self.params = ClassifierParams.model_validate(self.summary["params"])
        self.threads = threads
        self.base_dir = base_dir
        self._networks: dict[str, nn.Module] | None = None
        self._log: TrainingLog | None = None
        self._labels: LabelSet | None = None

    @property
    def key(self) -> str:
        return str(self.summary["key"])

    @property
    def network_names(self) -> list[str]:
        return list(self.summary["trainer"]["networks"])

    @property
    def predict_with(self) -> list[str]:
        return list(self.summary["trainer"]["predict_with"])

    @property
    def checkpoint_epochs(self) -> list[int]:
        return list(self.summary["checkpoint_epochs"])

    def new_model(self) -> nn.Module:
        return build_model(self.params.architecture, tuple(self.summary["input_shape"]), self.summary["num_classes"])

    def _model(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        model = self.new_model()
        model.load_state_dict(state)
        return model.eval()

    @property
    def networks(self) -> dict[str, nn.Module]:
        if self._networks is None:
            states = torch.load(self.directory / "weights.pt", weights_only=True)
            self._networks = {name: self._model(states[name]) for name in self.network_names}
        return self._networks

    def logits(self, x: np.ndarray | torch.Tensor, network: str | None = None) -> np.ndarray:
        """Class logits: the trainer's prediction (its networks' summed logits), or one network's."""
        names = [network] if network else self.predict_with
        with TorchThreads(self.threads):
            return sum_logits(self.networks, names, _tensor(x)).numpy()

    def predict(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.logits(x).argmax(axis=1)

    def features(self, x: np.ndarray | torch.Tensor, network: str | None = None) -> np.ndarray:
        """Penultimate features of one network (default: the first the prediction uses)."""
        model = self.networks[network or self.predict_with[0]]
        with TorchThreads(self.threads), torch.inference_mode():
            return penultimate(model, _tensor(x)).numpy()

    def parameters_by_layer(self, network: str | None = None, epoch: int | None = None
                            ) -> OrderedDict[str, OrderedDict[str, np.ndarray]]:
        """{layer: {param: array}} of one network, trained or at a checkpoint epoch."""
        name = network or self.predict_with[0]
        model = self.networks[name] if epoch is None else self.model_at(epoch, name)
        return OrderedDict((layer, OrderedDict((k, v.detach().numpy().copy()) for k, v in params.items()))
                           for layer, params in layer_parameters(model).items())

    def checkpoint(self, epoch: int) -> dict[str, dict[str, torch.Tensor]]:
        """{network: state_dict} at a checkpoint epoch (0: initialisation)."""
        path = self.directory / "checkpoints" / f"epoch-{epoch:04d}.pt"
        if not path.exists():
            raise UsageError(f"classifier {self.key} has no checkpoint at epoch {epoch}; "
                             f"it has {self.checkpoint_epochs}")
        return torch.load(path, weights_only=True)

    def model_at(self, epoch: int, network: str | None = None) -> nn.Module:
        return self._model(self.checkpoint(epoch)[network or self.predict_with[0]])

    @property
    def log(self) -> TrainingLog:
        if self._log is None:
            with np.load(self.directory / "log.npz") as arrays:
                self._log = TrainingLog.from_arrays({k: arrays[k] for k in arrays.files})
        return self._log

    @property
    def labels(self) -> LabelSet:
        if self._labels is None:
            with np.load(self.directory / "labels.npz") as arrays:
                self._labels = LabelSet.from_arrays({k: arrays[k] for k in arrays.files})
        return self._labels

    def data(self) -> ClassificationData:
        """The source's data again (inputs are not stored), checked against the hash it trained on."""
        data = load_source(self.params.source, self.base_dir)
        if data.fingerprint() != self.summary["data_fingerprint"]:
            raise UsageError(f"the data of classifier {self.key}'s source has changed since it was trained "
                             f"({self.params.source.kind}); its stored labels and log no longer match it")
        return data


def _tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.tensor(np.asarray(x, dtype=np.float32))
