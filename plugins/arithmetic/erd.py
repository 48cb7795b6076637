"""`arithmetic.erd`: encoding–regression–decoding probes (Maltoni & Ferrara 2024): which layers
arrange the diagonal inputs (a = b) by token, and which by value."""

from __future__ import annotations

from typing import Any

import numpy as np

from memeval.api import (
    Context,
    EvaluationResult,
    Method,
    Metric,
    MetricSpec,
    Params,
    Records,
    Section,
    UsageError,
)
from memeval_plugins.arithmetic.sections import erd_sections

REFERENCES = ("input_token", "input_value", "output_token", "output_value")


class ErdParams(Params):
    """No settings: the probe uses every diagonal pair (a = b) of the dataset and every layer."""


def diagonal(samples: Any) -> list[dict[str, Any]]:
    rows = []
    for s in samples:
        meta = s.meta
        if not {"a", "b", "value"} <= meta.keys():
            raise UsageError(
                "the dataset must come from the arithmetic loader (columns a, b, value)"
            )
        if meta["a"] == meta["b"]:
            prompt = s.prefix if s.prefix is not None else meta.get("prompt")
            target = s.suffix if s.suffix is not None else meta.get("target")
            rows.append(
                {
                    "id": s.id,
                    "a": int(meta["a"]),
                    "value": int(meta["value"]),
                    "prompt": prompt,
                    "target": target,
                }
            )
    if len(rows) < 3:
        raise UsageError(
            f"arithmetic.erd needs at least 3 diagonal pairs (a = b) in the dataset, found "
            f"{len(rows)}: use split: all"
        )
    return sorted(rows, key=lambda r: r["a"])


def hamming(texts: list[str]) -> np.ndarray:
    """Condensed pairwise Hamming distances (counts of differing characters) of equal-length texts."""
    from scipy.spatial.distance import pdist  # imported when used, not when the plugin loads

    codes = np.array([[ord(c) for c in t] for t in texts])
    return pdist(codes, metric="hamming") * codes.shape[1]


def reference_distances(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    from scipy.spatial.distance import pdist

    a = np.array([[r["a"]] for r in rows], dtype=np.float64)
    value = np.array([[r["value"]] for r in rows], dtype=np.float64)
    return {
        "input_token": hamming([r["prompt"] for r in rows]),
        "input_value": pdist(a, "cityblock"),
        "output_token": hamming([r["target"] for r in rows]),
        "output_value": pdist(value, "cityblock"),
    }


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation; None when either side is constant (undefined)."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def inner_layers(names: list[str]) -> list[str]:
    """Every block but the first encoder block and the last decoder block (and the embedding)."""
    blocks = [n for n in names if n != "embedding"]
    return blocks[1:-1]


class Erd(Method):
    """Encoding–regression–decoding: for every layer of a `seq2seq` model, the Pearson correlation
    between the pairwise distances of its flattened outputs on the diagonal inputs (a = b) and
    four reference distances: input-token Hamming, input value |a - a'|, output-token Hamming and
    output value |v - v'|. Early layers follow the input tokens (encoding), inner layers the
    values (regression), the last ones the output tokens (decoding). The decoder is teacher-forced
    with the true answers. One record per layer; the metrics compare the first encoder block with
    the inner blocks (all but the first encoder and last decoder block). On the diagonal,
    multiplication is the informative case: an addition's output tokens are its input's shifted.
    """

    name = "arithmetic.erd"
    summary = "encoding-regression-decoding: layer-by-layer correlation of representations with token and value distances"
    Params = ErdParams
    requires = frozenset({"transduce"})
    metrics = (
        MetricSpec(
            "first_encoder_input_value_r",
            "first encoder block: correlation with input value distance",
            None,
        ),
        MetricSpec(
            "inner_input_value_r", "highest inner-block correlation with input value distance", None
        ),
        MetricSpec(
            "first_encoder_output_value_r",
            "first encoder block: correlation with output value distance",
            None,
        ),
        MetricSpec(
            "inner_output_value_r",
            "highest inner-block correlation with output value distance",
            None,
        ),
        MetricSpec(
            "first_encoder_input_token_r",
            "first encoder block: correlation with input-token Hamming distance",
            None,
        ),
        MetricSpec(
            "last_decoder_output_token_r",
            "last decoder block: correlation with output-token Hamming distance",
            None,
        ),
    )
    records = {
        "layer": "embedding, encoder i, decoder i",
        "depth": "0 for the embedding, then 1, 2, ...",
        **{
            f"{ref}_r": f"Pearson r of layer distances with {ref.replace('_', ' ')} distances"
            for ref in REFERENCES
        },
    }

    def prepare(self, samples: Any, context: Context) -> list[list[dict[str, Any]]]:
        return [diagonal(samples)]  # one unit: the distances need every diagonal pair at once

    def map(self, batch: list[list[dict[str, Any]]], context: Context) -> list[dict[str, Any]]:
        return [record for rows in batch for record in erd_records(context.model, rows)]

    def reduce(self, records: list[dict[str, Any]], context: Context) -> list[Metric]:
        by_layer = {r["layer"]: r for r in records}
        names = [r["layer"] for r in sorted(records, key=lambda r: r["depth"])]
        first = by_layer[next(n for n in names if n != "embedding")]
        inner = [by_layer[n] for n in inner_layers(names)]
        metrics = [
            Metric("first_encoder_input_token_r", _nan(first["input_token_r"])),
            Metric("last_decoder_output_token_r", _nan(by_layer[names[-1]]["output_token_r"])),
        ]
        for ref in ("input_value", "output_value"):
            metrics.append(Metric(f"first_encoder_{ref}_r", _nan(first[f"{ref}_r"])))
            found = [r[f"{ref}_r"] for r in inner if r[f"{ref}_r"] is not None]
            if found:
                metrics.append(Metric(f"inner_{ref}_r", max(found), n=len(found)))
        context.artifact(
            "heatmap",
            {
                "layers": names,
                "references": list(REFERENCES),
                "r": [[by_layer[n][f"{ref}_r"] for ref in REFERENCES] for n in names],
            },
        )
        return metrics

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        return erd_sections(evaluation)


def erd_records(model: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from scipy.spatial.distance import pdist

    references = reference_distances(rows)
    layers = model.layer_outputs([r["prompt"] for r in rows], [r["target"] for r in rows])
    out = []
    for depth, (name, outputs) in enumerate(layers):
        distances = pdist(outputs, "euclidean")
        out.append(
            {
                "id": name,
                "layer": name,
                "depth": depth,
                **{f"{ref}_r": pearson(distances, references[ref]) for ref in REFERENCES},
            }
        )
    return out


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value
