"""`influence.self_influence`: how much each training example influences its own loss, as a
memorization score (Koh and Liang 2017; TracIn, Pruthi et al. 2020).

Two restrictions of the parameters, both scored on the trained classifier's noisy labels:
- the last layer (weights and bias of the final `nn.Linear`, the penultimate features fixed), with
  the exact Hessian of the mean training loss: I(z) = g_z^T (H + damping I)^-1 g_z, the Hessian built
  in closed form and solved by Cholesky (no approximation beyond the damping the singular softmax
  Hessian needs);
- the whole network with TracIn over the stored checkpoints: sum over checkpoints t (but the last)
  of eta_t |grad l_z(theta_t)|^2, eta_t the learning rate summed over the epochs until the next
  checkpoint (the step budget that checkpoint's gradient stands for).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from memeval.api import (
    Context,
    EvaluationResult,
    Histogram,
    ImageGrid,
    LinePlot,
    Method,
    Metric,
    MetricSpec,
    Params,
    Records,
    Section,
    Series,
    TorchThreads,
    UsageError,
    histogram_of,
    roc_auc,
    roc_curve,
    roc_metric,
)

SCORES = {"self_influence": "last-layer self-influence (exact Hessian)", "tracin": "TracIn self-influence"}


class SelfInfluenceParams(Params):
    damping: float = Field(1e-3, gt=0, description="added to the last-layer Hessian's diagonal (the softmax Hessian "
                                                   "is singular along the all-ones logit direction)")
    tracin: bool = Field(True, description="also score TracIn over the stored checkpoints (whole network)")
    chunk: int = Field(256, ge=1, description="examples per batch of per-example gradients")
    network: str | None = Field(None, description="which of the trainer's networks; none: the first it predicts with")
    show_top: int = Field(12, ge=0, le=64, description="highest-ranked training examples shown as images")


class SelfInfluence(Method):
    """Self-influence of every training example on the trained classifier, and how well it flags
    the mislabeled ones (the ground-truth memorized set: labels flipped by the injected noise).

    Metrics: the AUC of each score for detecting the flipped labels (stratified-bootstrap CI), and
    the share of flipped labels among the top-k scored examples, k the number flipped. Records: one
    per training example with both scores. Artifacts: the ROC curves and the top-ranked images."""

    name = "influence.self_influence"
    summary = "self-influence (last layer, exact inverse Hessian; TracIn over checkpoints) and its AUC on mislabeled examples"
    Params = SelfInfluenceParams
    requires = frozenset({"classify", "train"})
    needs_dataset = False
    metrics = (
        MetricSpec("self_influence_auc", "AUC of last-layer self-influence for detecting mislabeled examples", True),
        MetricSpec("self_influence_precision", "share of mislabeled examples among the top-k by last-layer "
                                               "self-influence, k = number mislabeled", True),
        MetricSpec("tracin_auc", "AUC of TracIn self-influence for detecting mislabeled examples", True),
        MetricSpec("tracin_precision", "share of mislabeled examples among the top-k by TracIn", True),
    )
    records = {"index": "position in the training set", "noisy": "whether the label was flipped",
               "clean_label": "the true label", "noisy_label": "the label trained on",
               "self_influence": "g^T (H + damping I)^-1 g on the last layer",
               "tracin": "TracIn self-influence over the checkpoints (whole network)"}

    @classmethod
    def produced_metrics(cls, params: SelfInfluenceParams) -> list[str]:  # type: ignore[override]
        return [m for m in cls.metric_names() if params.tracin or not m.startswith("tracin")]

    def prepare(self, samples: Any, context: Context) -> list[dict[str, Any]]:
        p: SelfInfluenceParams = self.params  # type: ignore[assignment]
        model = context.model
        data, labels = model.data(), model.labels
        network = p.network or model.model.predict_with[0]
        x, y = torch.tensor(data.x_train), torch.tensor(labels.noisy, dtype=torch.long)
        with TorchThreads(1):
            scores = {"self_influence": last_layer_self_influence(model.networks[network], x, y, p.damping)}
            if p.tracin:
                scores["tracin"] = tracin_self_influence(model, network, x, y, p.chunk)
        rows = []
        for i in range(len(y)):
            row = {"index": i, "noisy": bool(labels.mask[i]), "clean_label": int(labels.clean[i]),
                   "noisy_label": int(labels.noisy[i])}
            rows.append(row | {k: float(v[i]) for k, v in scores.items()})
        return rows

    def map(self, batch: list[dict[str, Any]], context: Context) -> list[dict[str, Any]]:
        return [{"id": str(r["index"]), **r} for r in batch]

    def reduce(self, records: list[dict[str, Any]], context: Context) -> list[Metric]:
        noisy = np.array([r["noisy"] for r in records])
        if noisy.all() or not noisy.any():
            raise UsageError("influence.self_influence needs a classifier trained with label noise "
                             "(both flipped and unflipped training labels)")
        metrics = []
        for score in SCORES:
            if score not in records[0]:
                continue
            values = np.array([r[score] for r in records])
            prefix = "self_influence" if score == "self_influence" else "tracin"
            metrics.append(roc_metric(f"{prefix}_auc", noisy, values, roc_auc, seed=context.seed))
            metrics.append(Metric(f"{prefix}_precision", top_k_precision(noisy, values), n=int(noisy.sum())))
            context.artifact(f"roc_{score}", thinned_roc(noisy, values))
        context.artifact("top_examples", self._top_examples(records, context))
        return metrics

    def _top_examples(self, records: list[dict[str, Any]], context: Context) -> dict[str, list[dict[str, Any]]]:
        p: SelfInfluenceParams = self.params  # type: ignore[assignment]
        data, labels = context.model.data(), context.model.labels
        return {score: top_images(np.array([r[score] for r in records]), data.x_train, data.input_shape, labels,
                                  p.show_top) for score in SCORES if score in records[0]}

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        blocks: list[Any] = []
        series = [Series(SCORES[s], *_xy(evaluation.artifacts[f"roc_{s}"])) for s in SCORES
                  if f"roc_{s}" in evaluation.artifacts]
        if series:
            blocks.append(LinePlot("Self-influence ROC: detecting the mislabeled training examples",
                                   "false positive rate (clean examples)", "true positive rate (mislabeled)",
                                   series, x_range=(0.0, 1.0), y_range=(0.0, 1.0), diagonal=True))
        for score, name in SCORES.items():
            values = [math.log10(r[score]) for r in records if r.get(score, 0) > 0]
            hist: Histogram | None = histogram_of(values, f"log10 {name}", "log10 score", bins=30)
            if hist is not None:
                blocks.append(hist)
        for score, top in evaluation.artifacts.get("top_examples", {}).items():
            if top:
                blocks.append(ImageGrid(f"Highest {SCORES[score]}: training images (label trained on / true)",
                                        [_image(t) for t in top]))
        return [Section("Self-influence", blocks)]


def _xy(roc: dict[str, list[float]]) -> tuple[list[float], list[float]]:
    return roc["fpr"], roc["tpr"]


def _image(top: dict[str, Any]) -> Any:
    from memeval.api import Image

    mark = " (mislabeled)" if top["noisy"] else ""
    return Image(top["pixels"], f"#{top['index']}: {top['noisy_label']} / {top['clean_label']}{mark}")


# ---------------------------------------------------------------- last layer, exact Hessian


def head_of(net: nn.Module) -> nn.Linear:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UsageError(f"{type(net).__name__} has no nn.Linear layer to take as its last layer")
    return linears[-1]


@torch.no_grad()
def head_inputs(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the last nn.Linear sees (the penultimate features), captured by a forward pre-hook."""
    captured: list[torch.Tensor] = []
    handle = head_of(net).register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        net.eval()(x)
    finally:
        handle.remove()
    return captured[-1].flatten(1)


def last_layer_gradients(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example gradients of the cross-entropy w.r.t. [W | b] (rows: classes), flattened
    row-major, in closed form: (softmax - onehot) outer [h, 1]; also the softmax and [h, 1]."""
    ones = torch.ones(len(features), 1, dtype=features.dtype)
    xt = torch.cat([features, ones], 1) if bias is not None else features
    wb = torch.cat([weight, bias[:, None]], 1) if bias is not None else weight
    probs = (xt @ wb.T).softmax(1)
    residual = probs - F.one_hot(labels, weight.shape[0]).to(probs.dtype)
    return (residual[:, :, None] * xt[:, None, :]).flatten(1), probs, xt


def last_layer_hessian(probs: torch.Tensor, xt: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Hessian of the mean cross-entropy w.r.t. [W | b] flattened row-major:
    (1/n) sum_i (diag(p_i) - p_i p_i^T) kron (x_i x_i^T), accumulated in chunks of examples."""
    n, classes = probs.shape
    dim = xt.shape[1]
    hessian = torch.zeros(classes, classes, dim, dim, dtype=probs.dtype)
    for start in range(0, n, chunk):
        p, x = probs[start:start + chunk], xt[start:start + chunk]
        curvature = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (m, C, C)
        weighted = (curvature.reshape(len(p), -1, 1) * x[:, None, :]).reshape(len(p), -1)  # (m, C*C*D)
        hessian += (weighted.T @ x).reshape(classes, classes, dim, dim)
    return (hessian / n).permute(0, 2, 1, 3).reshape(classes * dim, classes * dim)


def last_layer_self_influence(net: nn.Module, x: torch.Tensor, labels: torch.Tensor, damping: float) -> np.ndarray:
    """g_i^T (H + damping I)^-1 g_i for every training example, in float64."""
    head = head_of(net)
    features = head_inputs(net, x).double()
    bias = head.bias.detach().double() if head.bias is not None else None
    grads, probs, xt = last_layer_gradients(features, head.weight.detach().double(), bias, labels)
    hessian = last_layer_hessian(probs, xt)
    hessian += damping * torch.eye(len(hessian), dtype=hessian.dtype)
    factor = torch.linalg.cholesky(hessian)
    solved = torch.cholesky_solve(grads.T, factor)  # (P, n)
    return (grads.T * solved).sum(0).numpy()


# ---------------------------------------------------------------- TracIn


def per_example_sq_norms(net: nn.Module, x: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
    """|grad_theta l_i|^2 over all parameters, per example (torch.func: vmap of grad)."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in net.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(net, p, (xi[None],)), yi[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    out = []
    for start in range(0, len(x), chunk):
        grads = per_example(params, x[start:start + chunk], labels[start:start + chunk])
        out.append(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
    return torch.cat(out)


def checkpoint_weights(epochs: list[int], optimizer: dict[str, Any]) -> dict[int, float]:
    """Checkpoint epoch -> the learning rate summed over the epochs from it to the next checkpoint
    (the last checkpoint gets none). Cosine follows torch's CosineAnnealingLR stepped per epoch."""
    total, lr = int(optimizer["epochs"]), float(optimizer["lr"])

    def rate(epoch: int) -> float:  # 1-based training epoch
        if optimizer.get("schedule", "constant") == "cosine":
            return lr * (1 + math.cos(math.pi * (epoch - 1) / total)) / 2
        return lr

    ordered = sorted(epochs)
    return {start: sum(rate(e) for e in range(start + 1, end + 1)) for start, end in zip(ordered, ordered[1:], strict=False)}


def tracin_self_influence(model: Any, network: str, x: torch.Tensor, labels: torch.Tensor, chunk: int) -> np.ndarray:
    weights = checkpoint_weights(model.checkpoint_epochs, model.summary_info["params"]["optimizer"])
    total = torch.zeros(len(x), dtype=torch.float64)
    for epoch, weight in weights.items():
        net = model.model_at(epoch, network)
        total += weight * per_example_sq_norms(net, x, labels, chunk).double()
    return total.numpy()


# ---------------------------------------------------------------- summaries


def top_k_precision(noisy: np.ndarray, scores: np.ndarray) -> float:
    k = int(noisy.sum())
    order = np.argsort(-scores, kind="stable")
    return float(noisy[order[:k]].mean())


def thinned_roc(noisy: np.ndarray, scores: np.ndarray, points: int = 200) -> dict[str, list[float]]:
    fpr, tpr, _ = roc_curve(noisy, scores)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(points, len(fpr))).round().astype(int))
    return {"fpr": fpr[keep].round(5).tolist(), "tpr": tpr[keep].round(5).tolist()}


def top_images(scores: np.ndarray, x: np.ndarray, shape: tuple[int, ...], labels: Any, n: int) -> list[dict[str, Any]]:
    """The n highest-scored examples as grayscale images scaled to [0, 1] (first channel)."""
    out = []
    for i in np.argsort(-scores, kind="stable")[:n]:
        pixels = np.asarray(x[i], dtype=np.float64).reshape(shape)
        pixels = pixels[0] if pixels.ndim == 3 else pixels.reshape(1, -1) if pixels.ndim == 1 else pixels
        span = pixels.max() - pixels.min()
        pixels = (pixels - pixels.min()) / span if span > 0 else np.zeros_like(pixels)
        out.append({"index": int(i), "score": float(scores[i]), "noisy": bool(labels.mask[i]),
                    "noisy_label": int(labels.noisy[i]), "clean_label": int(labels.clean[i]),
                    "pixels": pixels.round(3).tolist()})
    return out
