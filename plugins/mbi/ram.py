"""The recurrent attention model (RAM, Mnih et al., NeurIPS 2014) as a `classifier` architecture, and
`ram`, the trainer that fits it (cross-entropy for the classifier and the core, REINFORCE for the
location policy, a learned baseline against its variance).

What the MBI paper (Giacomini et al. 2023) builds on, and the choices it leaves open, taken here:
- glimpse sensor: one square `glimpse` x `glimpse` patch at an integer pixel centre (single scale,
  as Mnih et al.'s 28x28 MNIST RAM; the image is zero padded). Locations live in [-1, 1]^2 and are
  rounded to the pixel grid before the patch is read, so the lookup table can key on them exactly;
  no gradient flows through the sensor anyway (the location is trained by REINFORCE only).
- glimpse network: g = ReLU(W_g ReLU(W_p patch) + W_l ReLU(W_q location)) (Mnih et al.'s form).
- core: h_t = ReLU(W_h h_{t-1} + W_x g_t), h_0 = 0 (the paper's "hidden vector").
- location policy: l_t ~ N(tanh(W_a h_t), `location_std`^2) while training (clipped to [-1, 1]),
  its mean at evaluation; the first glimpse is at the image centre (Mnih et al. draw it at random;
  a fixed start keeps the evaluation deterministic and the first table key small).
- classifier: softmax(W_c h_T) after the last glimpse; baseline b_t = W_b h_t (training only).
- reward 1 for a correct classification at the end, 0 otherwise (Mnih et al.).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from memeval.api import (
    Strict,
    Trainer,
    TrainingRun,
    TrainJob,
    TrainResult,
    UsageError,
    predict_logits,
)

BINARY_THRESHOLD = 0.5


class RecurrentAttention(nn.Module):
    """RAM: `glimpses` glimpses of `glimpse` x `glimpse` pixels, a ReLU recurrent core of `hidden`
    units, a Gaussian location policy and a linear classifier on the last hidden state."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        glimpse: int = 4,
        glimpses: int = 4,
        patch_hidden: int = 64,
        location_hidden: int = 16,
        glimpse_hidden: int = 128,
        hidden: int = 128,
        location_std: float = 0.15,
        binary: bool = False,
    ):
        super().__init__()
        if len(input_shape) != 3 or input_shape[0] != 1:
            raise UsageError(
                f"ram needs one-channel images (1, height, width); got shape {input_shape}"
            )
        if not 1 <= glimpse <= min(input_shape[1:]) or glimpses < 1:
            raise UsageError(
                f"ram needs 1 <= glimpse <= image side and glimpses >= 1; got glimpse={glimpse}, "
                f"glimpses={glimpses}"
            )
        self.height, self.width = int(input_shape[1]), int(input_shape[2])
        self.glimpse, self.glimpses, self.location_std = (
            int(glimpse),
            int(glimpses),
            float(location_std),
        )
        self.patch_net = nn.Linear(glimpse * glimpse, patch_hidden)
        self.where_net = nn.Linear(2, location_hidden)
        self.what = nn.Linear(patch_hidden, glimpse_hidden)
        self.where = nn.Linear(location_hidden, glimpse_hidden)
        self.core_h = nn.Linear(hidden, hidden)
        self.core_g = nn.Linear(glimpse_hidden, hidden)
        self.locator = nn.Linear(hidden, 2)
        self.baseline = nn.Linear(hidden, 1)
        self.head = nn.Linear(hidden, num_classes)
        self.hidden = hidden
        self.binary = bool(binary)
        self.log_pi: torch.Tensor | None = None  # (batch, glimpses - 1) after a training forward
        self.baselines: torch.Tensor | None = None

    # ---- the pieces the lookup tables replace, one step at a time

    def pixels(self, location: torch.Tensor) -> torch.Tensor:
        """Integer (row, column) centres of locations in [-1, 1]^2."""
        scale = torch.tensor([self.height - 1, self.width - 1], dtype=location.dtype)
        return torch.round((location.clamp(-1, 1) + 1) / 2 * scale).long()

    def normalised(self, pixels: torch.Tensor) -> torch.Tensor:
        """The rounded location back in [-1, 1]^2: what the glimpse network sees."""
        scale = torch.tensor([self.height - 1, self.width - 1], dtype=torch.float32)
        return pixels.float() / scale * 2 - 1

    def sense(self, x: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """The (batch, glimpse*glimpse) patches whose top-left corner is centre - glimpse // 2; with
        `binary`, each pixel thresholded at 0.5 (what the lookup keys hold)."""
        patch = read_patches(x[:, 0], pixels, self.glimpse).flatten(1)
        return (patch > BINARY_THRESHOLD).float() if self.binary else patch

    def start(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """h_0 = 0 and the first glimpse's pixel centre (the image centre)."""
        centre = torch.tensor([(self.height - 1) // 2, (self.width - 1) // 2]).expand(batch, 2)
        return torch.zeros(batch, self.hidden), centre

    def step(self, h: torch.Tensor, patch: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        what = F.relu(self.patch_net(patch))
        where = F.relu(self.where_net(self.normalised(pixels)))
        g = F.relu(self.what(what) + self.where(where))
        return F.relu(self.core_h(h) + self.core_g(g))

    def locate(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.locator(h.detach()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, pixels = self.start(len(x))
        log_pi, baselines = [], []
        for t in range(self.glimpses):
            h = self.step(h, self.sense(x, pixels), pixels)
            if t == self.glimpses - 1:
                break
            mean = self.locate(h)
            if self.training:
                location = (mean + self.location_std * torch.randn_like(mean)).detach().clamp(-1, 1)
                log_pi.append(
                    torch.distributions.Normal(mean, self.location_std).log_prob(location).sum(1)
                )
                baselines.append(self.baseline(h.detach()).squeeze(1))
            else:
                location = mean
            pixels = self.pixels(location)
        if self.training and log_pi:
            self.log_pi, self.baselines = torch.stack(log_pi, 1), torch.stack(baselines, 1)
        else:
            self.log_pi = self.baselines = None
        return self.head(h)


def read_patches(images: torch.Tensor, pixels: torch.Tensor, size: int) -> torch.Tensor:
    """(batch, size, size) crops of (batch, H, W) images, zero outside the image."""
    pad = size
    padded = F.pad(images, (pad, pad, pad, pad))
    top = pixels[:, 0] - size // 2 + pad
    left = pixels[:, 1] - size // 2 + pad
    offsets = torch.arange(size)
    rows = (top[:, None] + offsets)[:, :, None]
    cols = (left[:, None] + offsets)[:, None, :]
    return padded[torch.arange(len(images))[:, None, None], rows, cols]


def ram(input_shape: tuple[int, ...], num_classes: int, **kwargs: object) -> RecurrentAttention:
    """The architecture factory: `{kind: factory, factory: memeval_plugins.mbi.ram:ram, kwargs: {...}}`."""
    return RecurrentAttention(input_shape, num_classes, **kwargs)  # type: ignore[arg-type]


@dataclass
class Trajectory:
    """What the RAM did on a batch, in eval mode: per glimpse t (0-based) the pixel centre it read,
    the patch, and the hidden state after it; and the class it predicted."""

    pixels: np.ndarray  # (glimpses, n, 2) int
    patches: np.ndarray  # (glimpses, n, glimpse * glimpse) float
    hidden: np.ndarray  # (glimpses, n, hidden) float
    predicted: np.ndarray  # (n,) int


@torch.inference_mode()
def trajectory(
    model: RecurrentAttention, x: np.ndarray | torch.Tensor, chunk: int = 4096
) -> Trajectory:
    parts = [
        _trajectory(model, torch.tensor(np.asarray(x[i : i + chunk], dtype=np.float32)))
        for i in range(0, len(x), chunk)
    ]
    return Trajectory(
        *(
            np.concatenate([getattr(p, f) for p in parts], axis=1 if f != "predicted" else 0)
            for f in ("pixels", "patches", "hidden", "predicted")
        )
    )


def _trajectory(model: RecurrentAttention, x: torch.Tensor) -> Trajectory:
    was_training = model.training
    model.eval()
    try:
        h, pixels = model.start(len(x))
        seen_pixels, patches, hidden = [], [], []
        for t in range(model.glimpses):
            patch = model.sense(x, pixels)
            h = model.step(h, patch, pixels)
            seen_pixels.append(pixels.numpy())
            patches.append(patch.numpy())
            hidden.append(h.numpy())
            if t < model.glimpses - 1:
                pixels = model.pixels(model.locate(h))
        return Trajectory(
            np.stack(seen_pixels),
            np.stack(patches),
            np.stack(hidden),
            model.head(h).argmax(1).numpy(),
        )
    finally:
        model.train(was_training)


class RamTrainerParams(Strict):
    baseline_weight: float = Field(1.0, ge=0, description="weight of the baseline's squared error")
    reinforce_weight: float = Field(1.0, ge=0, description="weight of the REINFORCE term")


class RamTrainer(Trainer):
    """Mnih et al.'s hybrid loss per batch: cross-entropy (classifier, core, glimpse network) +
    REINFORCE on the location policy with reward 1 for a correct class, advantage = reward - baseline
    + the baseline's squared error. The log records the cross-entropy and prediction of each
    example's training forward pass (sampled locations); test predictions use the policy's mean."""

    name = "ram"
    summary = "recurrent attention model: cross-entropy + REINFORCE location policy with a learned baseline"
    Params = RamTrainerParams

    def train(self, job: TrainJob) -> TrainResult:
        run = TrainingRun(job, self.networks)
        net, data = run.nets["net"], job.data
        if not isinstance(net, RecurrentAttention):
            raise UsageError(
                f"trainer 'ram' trains the RAM architecture (memeval_plugins.mbi.ram:ram), "
                f"got {type(net).__name__}",
                field="trainer",
            )
        net.train()
        for epoch in range(1, job.optimizer.epochs + 1):
            for step, idx in enumerate(run.batches(data.n)):
                logits = net(data.x[idx])
                losses = F.cross_entropy(logits, data.y[idx], reduction="none")
                run.on_batch(epoch, step, "net", idx, losses)
                run.step("net", losses.mean() + self.policy_loss(net, logits, data.y[idx]))
                run.log.record(epoch, idx, losses, logits)
            run.end_epoch(epoch, lambda: predict_logits(net, data.x_test))
        return run.finish(self.predict_with)

    def policy_loss(
        self, net: RecurrentAttention, logits: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        if net.log_pi is None or net.baselines is None:  # a single glimpse: no location to learn
            return logits.new_zeros(())
        reward = (logits.detach().argmax(1) == y).float()[:, None].expand_as(net.baselines)
        advantage = (reward - net.baselines).detach()
        reinforce = -(net.log_pi * advantage).sum(1).mean()
        return self.params.reinforce_weight * reinforce + self.params.baseline_weight * F.mse_loss(
            net.baselines, reward
        )
