"""Training methods for classifiers under label noise, and the interface a plugin trainer follows.

A trainer is a class with a `name`, a pydantic `Params` model, the names of the networks it trains
(`networks`) and of those whose summed logits are its prediction (`predict_with`), and
`train(job) -> TrainResult`. `job` carries a model factory, the data as tensors (training inputs,
the *noisy* training labels, test inputs: clean labels never reach a trainer), the optimizer
settings, the seed, the epochs at which to keep checkpoints and the callbacks. A trainer fills a
`TrainingLog`: for every epoch and every training example, its loss against the noisy label and
its predicted class, and the predicted class of every test example. Callbacks see every epoch's
end (`on_epoch_end(EpochState)`) and, if they define `on_batch`, every optimisation step before its
backward pass (`on_batch(BatchState)`, with the per-example losses still attached to the graph, so
a callback can take per-subset gradients with `torch.autograd.grad(..., retain_graph=True)`).

Built-in trainers (`BUILTIN_TRAINERS`): `standard` (cross-entropy), `crosssplit` (Kim et al., ICML
2023) and `coteaching` (Han et al., NeurIPS 2018). Training is vectorised: whole batches of index
tensors, no Python loop over examples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn

from memeval.errors import UsageError
from memeval.suite import Strict

Index = torch.Tensor | slice
PREDICT_CHUNK = 8192


class OptimizerParams(Strict):
    name: Literal["sgd", "adam", "adamw"] = Field("adam", description="the torch optimizer")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay")
    epochs: int = Field(100, ge=1, description="passes over the training set")
    batch_size: int | None = Field(None, ge=1, description="examples per step; none: the whole training set")
    schedule: Literal["constant", "cosine"] = Field("constant", description="learning rate per epoch: constant, "
                                                                             "or cosine annealing to 0")


@dataclass
class TrainData:
    """What a trainer may see: inputs, the noisy labels, test inputs (never test labels)."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    num_classes: int

    @property
    def n(self) -> int:
        return len(self.y)


@dataclass
class TrainingLog:
    """Per epoch (rows) and example (columns): loss against the noisy label and predicted class on
    the training set, predicted class on the test set; `extras` holds a trainer's own arrays
    (e.g. CrossSplit's corrected labels). `final_*` are from the trained model in eval mode."""

    loss: np.ndarray
    pred: np.ndarray
    test_pred: np.ndarray
    epoch_seconds: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    final_loss: np.ndarray | None = None
    final_pred: np.ndarray | None = None
    final_test_pred: np.ndarray | None = None

    @classmethod
    def empty(cls, epochs: int, n: int, n_test: int, num_classes: int) -> TrainingLog:
        kind = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32
        return cls(np.full((epochs, n), np.nan, np.float32), np.full((epochs, n), -1, kind),
                   np.full((epochs, n_test), -1, kind), np.zeros(epochs))

    @property
    def epochs(self) -> int:
        return len(self.loss)

    def record(self, epoch: int, idx: Index, losses: torch.Tensor, logits: torch.Tensor) -> None:
        """Row `epoch` (1-based) for the examples `idx`."""
        rows = idx if isinstance(idx, slice) else idx.numpy()
        self.loss[epoch - 1, rows] = losses.detach().numpy()
        self.pred[epoch - 1, rows] = logits.detach().argmax(1).numpy()

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"loss": self.loss, "pred": self.pred, "test_pred": self.test_pred, "epoch_seconds": self.epoch_seconds}
        for name in ("final_loss", "final_pred", "final_test_pred"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out.update({f"extra_{k}": v for k, v in self.extras.items()})
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> TrainingLog:
        extras = {k[len("extra_"):]: np.asarray(v) for k, v in arrays.items() if k.startswith("extra_")}
        finals = {k: np.asarray(arrays[k]) for k in ("final_loss", "final_pred", "final_test_pred") if k in arrays}
        return cls(np.asarray(arrays["loss"]), np.asarray(arrays["pred"]), np.asarray(arrays["test_pred"]),
                   np.asarray(arrays["epoch_seconds"]), extras, **finals)


@dataclass
class BatchState:
    """One optimisation step of one network, before its backward pass. `losses` are per example
    (for `indices`, the training examples whose labels the step uses) and still carry the graph."""

    epoch: int
    step: int
    network: str
    model: nn.Module
    indices: torch.Tensor
    losses: torch.Tensor


@dataclass
class EpochState:
    """The end of an epoch (1-based): the networks, their optimizers and the log so far (rows up to
    `epoch` are filled)."""

    epoch: int
    networks: Mapping[str, nn.Module]
    optimizers: Mapping[str, torch.optim.Optimizer]
    log: TrainingLog


class TrainerCallback:
    """Base of training callbacks; override either hook. A trainer builds `BatchState`s only when
    some callback overrides `on_batch`."""

    def on_batch(self, state: BatchState) -> None:
        return None

    def on_epoch_end(self, state: EpochState) -> None:
        return None


@dataclass
class TrainJob:
    build_model: Callable[[], nn.Module]
    data: TrainData
    optimizer: OptimizerParams
    seed: int
    checkpoint_epochs: frozenset[int] = frozenset()
    callbacks: Sequence[Any] = ()
    noise_rate: float | None = None  # the configured rate (a hyperparameter some baselines assume known)
    test_epochs: frozenset[int] | None = None  # epochs whose test predictions are logged; None: all

    def __post_init__(self) -> None:
        if self.test_epochs is None:
            self.test_epochs = frozenset(range(1, self.optimizer.epochs + 1))


@dataclass
class TrainResult:
    networks: dict[str, nn.Module]
    log: TrainingLog
    checkpoints: dict[int, dict[str, dict[str, torch.Tensor]]]
    info: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Base of training methods. Subclasses set `name`, `summary`, `Params`, `networks`,
    `predict_with` and implement `train`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = Strict
    networks: ClassVar[tuple[str, ...]] = ("net",)
    predict_with: ClassVar[tuple[str, ...]] = ("net",)

    def __init__(self, params: BaseModel | None = None):
        self.params = params if params is not None else self.Params()

    def train(self, job: TrainJob) -> TrainResult:
        raise NotImplementedError

    def predict_logits(self, networks: Mapping[str, nn.Module], x: torch.Tensor) -> torch.Tensor:
        return sum_logits(networks, self.predict_with, x)


# ---------------------------------------------------------------- shared pieces


class TrainingRun:
    """The bookkeeping every trainer shares: networks and optimizers, the log, checkpoints,
    callbacks, the shuffling generator. A trainer (built-in or a plugin's) makes one with its
    network names, then per step uses `batches()`, `on_batch()`, `step()` and `log.record()`,
    per epoch `end_epoch()`, and returns `finish()`."""

    def __init__(self, job: TrainJob, names: Sequence[str]):
        self.job = job
        torch.manual_seed(job.seed)
        self.nets: dict[str, nn.Module] = {name: job.build_model() for name in names}
        self.opts = {name: make_optimizer(net, job.optimizer) for name, net in self.nets.items()}
        self.schedules = {name: make_schedule(opt, job.optimizer) for name, opt in self.opts.items()}
        self.generator = torch.Generator().manual_seed(job.seed)
        data = job.data
        self.log = TrainingLog.empty(job.optimizer.epochs, data.n, len(data.x_test), data.num_classes)
        self.checkpoints: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
        self.batch_hooks = [cb for cb in job.callbacks if _overrides(cb, "on_batch")]
        self.epoch_hooks = [cb for cb in job.callbacks if _overrides(cb, "on_epoch_end")]
        self.started = time.perf_counter()
        self.keep(0)

    def batches(self, count: int, batch_size: int | None = None) -> list[Index]:
        """One epoch's batches over `count` positions: a seeded permutation cut into batches, or
        the whole range (no copy) for a full batch."""
        size = batch_size or self.job.optimizer.batch_size
        if size is None or size >= count:
            return [slice(None)] if count else []
        order = torch.randperm(count, generator=self.generator)
        return list(order.split(size))

    def step(self, name: str, loss: torch.Tensor) -> None:
        opt = self.opts[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def on_batch(self, epoch: int, step: int, name: str, indices: Index, losses: torch.Tensor) -> None:
        if self.batch_hooks:
            ids = torch.arange(self.job.data.n)[indices] if isinstance(indices, slice) else indices
            state = BatchState(epoch, step, name, self.nets[name], ids, losses)
            for hook in self.batch_hooks:
                hook.on_batch(state)

    def end_epoch(self, epoch: int, test_logits: Callable[[], torch.Tensor]) -> None:
        """Close an epoch: step the schedules, test predictions (at the job's test epochs),
        timing, checkpoint, callbacks."""
        for schedule in self.schedules.values():
            if schedule is not None:
                schedule.step()
        if epoch in self.job.test_epochs:
            self.log.test_pred[epoch - 1] = test_logits().argmax(1).numpy()
        now = time.perf_counter()
        self.log.epoch_seconds[epoch - 1] = now - self.started
        self.started = now
        self.keep(epoch)
        state = EpochState(epoch, self.nets, self.opts, self.log)
        for hook in self.epoch_hooks:
            hook.on_epoch_end(state)

    def keep(self, epoch: int) -> None:
        if epoch in self.job.checkpoint_epochs:
            self.checkpoints[epoch] = {name: clone_state(net) for name, net in self.nets.items()}

    def finish(self, predict_with: Sequence[str], info: dict[str, Any] | None = None) -> TrainResult:
        """Final eval-mode predictions of the trained model, and the result."""
        data = self.job.data
        logits = sum_logits(self.nets, predict_with, data.x)
        self.log.final_loss = F.cross_entropy(logits, data.y, reduction="none").numpy()
        self.log.final_pred = logits.argmax(1).numpy().astype(self.log.pred.dtype)
        self.log.final_test_pred = sum_logits(self.nets, predict_with, data.x_test).argmax(1).numpy().astype(
            self.log.pred.dtype)
        for net in self.nets.values():
            net.eval()
        return TrainResult(self.nets, self.log, self.checkpoints, info or {})


def _overrides(callback: Any, hook: str) -> bool:
    method = getattr(type(callback), hook, None)
    return method is not None and method is not getattr(TrainerCallback, hook)


def make_optimizer(model: nn.Module, opts: OptimizerParams) -> torch.optim.Optimizer:
    if opts.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
    cls = torch.optim.Adam if opts.name == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, opts: OptimizerParams) -> Any:
    if opts.schedule == "constant":
        return None
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=opts.epochs)


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode logits in chunks; restores the model's train/eval mode."""
    was_training = model.training
    model.eval()
    try:
        if len(x) <= PREDICT_CHUNK:
            return model(x).clone()
        return torch.cat([model(chunk) for chunk in x.split(PREDICT_CHUNK)])
    finally:
        model.train(was_training)


def sum_logits(networks: Mapping[str, nn.Module], names: Sequence[str], x: torch.Tensor) -> torch.Tensor:
    out = predict(networks[names[0]], x)
    for name in names[1:]:
        out = out + predict(networks[name], x)
    return out


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy against a probability vector."""
    return -(F.log_softmax(logits, dim=1) * targets).sum(dim=1)


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    powered = probs ** (1.0 / temperature)
    return powered / powered.sum(dim=1, keepdim=True)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-row Jensen-Shannon divergence (natural log), with the 1e-10 smoothing of the CrossSplit code."""
    m = (p + q) / 2

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * ((a + 1e-10) / (b + 1e-10)).log()).sum(dim=1)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


# ---------------------------------------------------------------- standard


class StandardParams(Strict):
    pass


class Standard(Trainer):
    """Cross-entropy against the noisy labels; one network.

    The training log is taken from the training steps themselves: an example's loss and prediction
    in epoch e are those of the forward pass that trained on it in epoch e, before that step's
    update (as forgetting statistics are usually gathered, Toneva et al. 2019). It costs nothing
    extra; with a full batch it is exactly the model at the start of the epoch. With dropout it is
    the dropout-perturbed prediction. The test predictions of epoch e are from the model at its end,
    in eval mode; `final_*` from the trained model in eval mode."""

    name = "standard"
    summary = "cross-entropy on the noisy labels"
    Params = StandardParams

    def train(self, job: TrainJob) -> TrainResult:
        run = TrainingRun(job, self.networks)
        net, data = run.nets["net"], job.data
        net.train()
        for epoch in range(1, job.optimizer.epochs + 1):
            for step, idx in enumerate(run.batches(data.n)):
                logits = net(data.x[idx])
                losses = F.cross_entropy(logits, data.y[idx], reduction="none")
                run.on_batch(epoch, step, "net", idx, losses)
                run.step("net", losses.mean())
                run.log.record(epoch, idx, losses, logits)
            run.end_epoch(epoch, lambda: predict(net, data.x_test))
        return run.finish(self.predict_with)


# ---------------------------------------------------------------- crosssplit


class CrossSplitParams(Strict):
    warmup_epochs: int = Field(10, ge=0, description="cross-entropy on the whole noisy set first (paper: 10 of 300 "
                                                    "epochs on CIFAR-10, 30 on CIFAR-100)")
    relaxation_epochs: int = Field(10, ge=0, description="the paper's delta: gamma is 0.6 for 2 delta epochs after the "
                                                        "warm-up, 0.8 for one more delta, then 1 (paper: 10)")
    temperature: float = Field(0.5, gt=0, description="sharpening temperature T")
    lambda_u: float = Field(30.0, ge=0, description="weight of the unlabeled (MSE) loss")
    rampup_epochs: float = Field(16.0, gt=0, description="the unlabeled weight ramps linearly from 0 over this "
                                                         "many epochs after the warm-up")
    mixup_alpha: float = Field(4.0, gt=0, description="MixMatch's Beta(alpha, alpha)")
    unlabeled_ratio: float = Field(0.5, gt=0, description="unlabeled batch size / labeled batch size")
    prior_penalty: float = Field(1.0, ge=0, description="weight of the uniform-prior penalty on the mean prediction")
    warmup_confidence_penalty: float = Field(0.0, ge=0, description="negative-entropy penalty in the warm-up "
                                                                    "(the code uses 0.1 for asymmetric noise)")


class CrossSplit(Trainer):
    """CrossSplit (Kim, Baratin, Zhang, Lacoste-Julien, ICML 2023): two networks on disjoint halves
    of the training set, cross-split label correction and cross-split semi-supervised training.

    Schedule, as in the paper and its public code (SAITPublic/CrossSplit):
    - A random half split of the training set (seeded); net1 owns the first half, net2 the second.
    - Warm-up: `warmup_epochs` of cross-entropy on the whole noisy training set, both networks.
    - Then each epoch, net1 and then net2 (each seeing the other already updated this epoch):
      1. Cross-split label correction. The peer network's softmax p on every training example and
         the Jensen-Shannon divergence d between p and the one-hot noisy label; d is min-max
         normalised per noisy class over the training set (paper eq. 4) and clipped to [0, 1]; then
         beta = (d - 0.5) * gamma + 0.5 with gamma 0.6 / 0.8 / 1 (paper eq. 2 and its relaxation
         schedule); the soft label is s = beta * p + (1 - beta) * y (eq. 1), sharpened by T.
      2. Cross-split semi-supervised training: the network's own split is labeled with s; the
         peer's split is unlabeled, its targets the network's own sharpened predictions. MixMatch:
         labeled and unlabeled inputs and targets mixed with lambda ~ Beta(alpha, alpha),
         lambda = max(lambda, 1 - lambda), against a random permutation of the same batch;
         soft cross-entropy on the labeled part, mean squared error of probabilities on the
         unlabeled part weighted by lambda_u times a linear ramp-up, plus the uniform-prior penalty
         sum_c pi_c log(pi_c / mean prediction_c).
    - Prediction (test and the training log): the sum of both networks' logits, as the paper's test.

    Deviations from the paper, all from having plain tensors instead of image pipelines:
    - No data augmentation. The paper averages predictions over two weak augmentations and adds a
      SimCLR contrastive loss (weight 0.025) on two strong augmentations; here each example has one
      view, the predictions are of that view, and the contrastive term is left out.
    - The defaults are the paper's CIFAR-10 schedule in epochs (10 warm-up epochs, delta 10, ramp-up
      16, lambda_u 30, T 0.5, alpha 4); the paper trains 300 epochs, and on digits 150 suffice.
    - The optimizer and its schedule come from the recipe (the paper: SGD, lr 0.1, momentum 0.9,
      weight decay 5e-4, cosine over 300 epochs); both networks use the same settings.

    Log: the loss and prediction of the summed logits at each epoch's end, in eval mode (the
    algorithm computes both networks' predictions on the whole training set anyway). Extras:
    `split` (0 or 1: the network that owns each example), `corrected` (the argmax of the corrected
    label each example was trained with that epoch; -1 in the warm-up), `beta` (its beta),
    `own_pred` (the prediction of the network that owns the example)."""

    name = "crosssplit"
    summary = "CrossSplit: two networks on disjoint halves, peer label correction, semi-supervised on the other half"
    Params = CrossSplitParams
    networks = ("net1", "net2")
    predict_with = ("net1", "net2")

    def train(self, job: TrainJob) -> TrainResult:
        p: CrossSplitParams = self.params  # type: ignore[assignment]
        run = TrainingRun(job, self.networks)
        data, epochs = job.data, job.optimizer.epochs
        order = torch.randperm(data.n, generator=run.generator)
        halves = (order[: data.n // 2].sort().values, order[data.n // 2:].sort().values)
        split = np.zeros(data.n, dtype=np.int8)
        split[halves[1].numpy()] = 1
        kind = run.log.pred.dtype
        extras = {"split": split, "corrected": np.full((epochs, data.n), -1, kind),
                  "beta": np.full((epochs, data.n), np.nan, np.float32), "own_pred": np.full((epochs, data.n), -1, kind)}
        mix_rng = np.random.default_rng([job.seed, 0x6D6978])
        logits: dict[str, torch.Tensor] = {}
        for epoch in range(1, epochs + 1):
            if epoch <= p.warmup_epochs:
                for name in self.networks:
                    self._warmup_epoch(run, name, epoch)
                    logits[name] = predict(run.nets[name], data.x)
            else:
                for own, (name, peer) in enumerate((("net1", "net2"), ("net2", "net1"))):
                    labeled, unlabeled = halves[own], halves[1 - own]
                    targets = self._corrected_labels(logits[peer], data, epoch, extras, labeled)
                    self._ssl_epoch(run, name, epoch, labeled, unlabeled, targets, mix_rng)
                    logits[name] = predict(run.nets[name], data.x)
            self._log_epoch(run, epoch, logits, halves, extras)
        run.log.extras.update(extras)
        return run.finish(self.predict_with, {"split_sizes": [len(h) for h in halves]})

    def _warmup_epoch(self, run: TrainingRun, name: str, epoch: int) -> None:
        p: CrossSplitParams = self.params  # type: ignore[assignment]
        net, data = run.nets[name], run.job.data
        for step, idx in enumerate(run.batches(data.n)):
            out = net(data.x[idx])
            losses = F.cross_entropy(out, data.y[idx], reduction="none")
            run.on_batch(epoch, step, name, idx, losses)
            loss = losses.mean()
            if p.warmup_confidence_penalty:
                probs = out.softmax(dim=1)
                loss = loss + p.warmup_confidence_penalty * (probs * probs.clamp_min(1e-12).log()).sum(1).mean()
            run.step(name, loss)

    def _gamma(self, epoch: int) -> float:
        p: CrossSplitParams = self.params  # type: ignore[assignment]
        since = epoch - 1 - p.warmup_epochs  # 0-based epochs after the warm-up, as the code counts
        if since < 2 * p.relaxation_epochs:
            return 0.6
        return 0.8 if since < 3 * p.relaxation_epochs else 1.0

    def _corrected_labels(self, peer_logits: torch.Tensor, data: TrainData, epoch: int,
                          extras: dict[str, np.ndarray], labeled: torch.Tensor) -> torch.Tensor:
        """Sharpened soft labels s = beta * p_peer + (1 - beta) * y for every training example
        (the caller uses its own split's rows); records beta and argmax(s) of `labeled`."""
        p: CrossSplitParams = self.params  # type: ignore[assignment]
        with torch.no_grad():
            probs = peer_logits.softmax(dim=1)
            onehot = F.one_hot(data.y, data.num_classes).to(probs.dtype)
            dist = js_divergence(onehot, probs)
            beta = normalised_per_class(dist, data.y, data.num_classes)
            beta = (beta - 0.5) * self._gamma(epoch) + 0.5
            soft = beta[:, None] * probs + (1 - beta[:, None]) * onehot
        rows = labeled.numpy()
        extras["beta"][epoch - 1, rows] = beta[labeled].numpy()
        extras["corrected"][epoch - 1, rows] = soft[labeled].argmax(1).numpy()
        return sharpen(soft, p.temperature)

    def _ssl_epoch(self, run: TrainingRun, name: str, epoch: int, labeled: torch.Tensor, unlabeled: torch.Tensor,
                   targets: torch.Tensor, mix_rng: np.random.Generator) -> None:
        p: CrossSplitParams = self.params  # type: ignore[assignment]
        net, data = run.nets[name], run.job.data
        batches = run.batches(len(labeled))
        size = run.job.optimizer.batch_size or len(labeled)
        u_size = max(1, round(size * p.unlabeled_ratio))
        u_order = unlabeled[torch.randperm(len(unlabeled), generator=run.generator)]
        prior = torch.full((data.num_classes,), 1.0 / data.num_classes)
        for step, pos in enumerate(batches):
            x_idx = labeled[pos]
            start = (step * u_size) % len(u_order)
            u_idx = u_order[start:start + u_size]
            with torch.no_grad():
                u_targets = sharpen(net(data.x[u_idx]).softmax(dim=1), p.temperature)
            inputs = torch.cat([data.x[x_idx], data.x[u_idx]])
            mixed_targets = torch.cat([targets[x_idx], u_targets])
            lam = float(mix_rng.beta(p.mixup_alpha, p.mixup_alpha))
            lam = max(lam, 1 - lam)
            perm = torch.randperm(len(inputs), generator=run.generator)
            out = net(lam * inputs + (1 - lam) * inputs[perm])
            mixed_targets = lam * mixed_targets + (1 - lam) * mixed_targets[perm]
            n_x = len(x_idx)
            losses = soft_cross_entropy(out[:n_x], mixed_targets[:n_x])
            run.on_batch(epoch, step, name, x_idx, losses)
            unlabeled_loss = ((out[n_x:].softmax(dim=1) - mixed_targets[n_x:]) ** 2).mean()
            progress = (epoch - 1 + step / len(batches) - p.warmup_epochs) / p.rampup_epochs
            weight = p.lambda_u * float(np.clip(progress, 0.0, 1.0))
            mean_pred = out.softmax(dim=1).mean(dim=0)
            penalty = (prior * (prior / mean_pred).log()).sum()
            run.step(name, losses.mean() + weight * unlabeled_loss + p.prior_penalty * penalty)

    def _log_epoch(self, run: TrainingRun, epoch: int, logits: Mapping[str, torch.Tensor],
                   halves: tuple[torch.Tensor, torch.Tensor], extras: dict[str, np.ndarray]) -> None:
        data = run.job.data
        total = logits["net1"] + logits["net2"]
        run.log.record(epoch, slice(None), F.cross_entropy(total, data.y, reduction="none"), total)
        for own, name in enumerate(self.networks):
            rows = halves[own]
            extras["own_pred"][epoch - 1, rows.numpy()] = logits[name][rows].argmax(1).numpy()
        run.end_epoch(epoch, lambda: sum_logits(run.nets, self.predict_with, data.x_test))


def normalised_per_class(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(v - min_c) / (max_c - min_c) with min and max over the examples labelled c, clipped to [0, 1]."""
    low = torch.full((num_classes,), math.inf, dtype=values.dtype).scatter_reduce(0, labels, values, "amin")
    high = torch.full((num_classes,), -math.inf, dtype=values.dtype).scatter_reduce(0, labels, values, "amax")
    span = (high - low)[labels]
    scaled = (values - low[labels]) / torch.where(span > 0, span, torch.ones_like(span))
    return scaled.clamp(0.0, 1.0)


# ---------------------------------------------------------------- co-teaching


class CoTeachingParams(Strict):
    forget_rate: float | None = Field(None, ge=0, lt=1, description="share of large-loss examples each network "
                                                                    "drops; none: the configured noise rate "
                                                                    "(the paper assumes it known)")
    num_gradual: int = Field(10, ge=1, description="epochs over which the drop rate grows linearly to forget_rate "
                                                   "(paper: T_k = 10)")
    exponent: float = Field(1.0, gt=0, description="c in forget_rate * min((epoch / T_k)^c, 1) (paper: 1)")


class CoTeaching(Trainer):
    """Co-teaching (Han et al., NeurIPS 2018): two networks; in every batch each keeps its
    (1 - R(t)) smallest-loss examples and its peer is updated on those, with
    R(t) = forget_rate * min((t / T_k)^c, 1), t the 0-based epoch, as the paper's code.

    Prediction is net1's, as the paper reports. The log is from the training steps (net1's forward
    pass on each example, before the step; see `standard`). Extra: `selected` (1 where net2 kept
    the example, i.e. its noisy label trained net1 that epoch). Deviation: none in the algorithm;
    the paper trains a 9-layer CNN with Adam and a learning-rate decay, here the recipe's
    architecture and optimizer."""

    name = "coteaching"
    summary = "co-teaching: two networks, each trained on the small-loss examples its peer selects"
    Params = CoTeachingParams
    networks = ("net1", "net2")
    predict_with = ("net1",)

    def train(self, job: TrainJob) -> TrainResult:
        p: CoTeachingParams = self.params  # type: ignore[assignment]
        forget = p.forget_rate if p.forget_rate is not None else job.noise_rate
        if forget is None:
            raise UsageError("coteaching needs forget_rate (or a noise rate in the recipe to default to)")
        run = TrainingRun(job, self.networks)
        data, epochs = job.data, job.optimizer.epochs
        selected = np.zeros((epochs, data.n), dtype=np.int8)
        for epoch in range(1, epochs + 1):
            rate = forget * min(((epoch - 1) / p.num_gradual) ** p.exponent, 1.0)
            for step, idx in enumerate(run.batches(data.n)):
                self._step(run, epoch, step, idx, rate, selected)
            run.end_epoch(epoch, lambda: predict(run.nets["net1"], data.x_test))
        run.log.extras["selected"] = selected
        return run.finish(self.predict_with, {"forget_rate": forget})

    def _step(self, run: TrainingRun, epoch: int, step: int, idx: Index, rate: float, selected: np.ndarray) -> None:
        data = run.job.data
        ids = torch.arange(data.n)[idx] if isinstance(idx, slice) else idx
        x, y = data.x[idx], data.y[idx]
        out1, out2 = run.nets["net1"](x), run.nets["net2"](x)
        loss1 = F.cross_entropy(out1, y, reduction="none")
        loss2 = F.cross_entropy(out2, y, reduction="none")
        keep = max(1, len(y) - int(rate * len(y)))
        by1 = loss1.detach().argsort()[:keep]  # net1's small-loss picks train net2
        by2 = loss2.detach().argsort()[:keep]
        run.on_batch(epoch, step, "net1", ids[by2], loss1[by2])
        run.on_batch(epoch, step, "net2", ids[by1], loss2[by1])
        run.step("net1", loss1[by2].mean())
        run.step("net2", loss2[by1].mean())
        run.log.record(epoch, idx, loss1, out1)
        selected[epoch - 1, ids[by2].numpy()] = 1


BUILTIN_TRAINERS: dict[str, type[Trainer]] = {cls.name: cls for cls in (Standard, CrossSplit, CoTeaching)}
