"""`mbi.lookup`: memorization-based inference (Giacomini et al. 2023) of a trained RAM, its accuracy,
table size, lookups and energy, next to the RAM computed normally and to MLP and CNN baselines."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field

from memeval.api import (
    Context,
    EvaluationResult,
    LinePlot,
    Method,
    Metric,
    MetricSpec,
    Params,
    Records,
    Section,
    Series,
    Strict,
    Table,
    Text,
    UsageError,
    rate_metric,
)
from memeval_plugins.mbi.energy import (
    PAPER_RATIOS,
    SOURCES,
    EnergyParams,
    compute_energy_pj,
    count_macs,
    lookup_energy_pj,
)
from memeval_plugins.mbi.ram import RecurrentAttention, Trajectory, trajectory
from memeval_plugins.mbi.tables import build_tables, lookup_inference

DEFAULTS = EnergyParams().model_dump()


class Clusters(Strict):
    hidden: int = Field(ge=1, le=4096, description="hidden-state clusters per glimpse")
    patches: int = Field(ge=1, le=4096, description="patch keys (codebook size)")


class LookupParams(Params):
    clusters: Clusters = Field(
        default_factory=lambda: Clusters(hidden=64, patches=64),
        description="the table whose accuracy and energy are the headline metrics",
    )
    sweep: list[Clusters] = Field(
        default_factory=lambda: [Clusters(hidden=k, patches=k) for k in (4, 16, 64)],
        description="further table sizes for the accuracy / size / energy curve",
    )
    mlp: str | None = Field(None, description="a suite model (classifier, MLP) to compare with")
    cnn: str | None = Field(
        None, description="a suite model (classifier, e.g. the ResNet-20 factory) to compare with"
    )
    levels: int = Field(
        1,
        ge=1,
        le=64,
        description="bits per pixel of the patch keys (a thermometer code; "
        "glimpse^2 x levels must be at most 64)",
    )
    energy: EnergyParams = Field(
        default_factory=EnergyParams,
        description="energy constants (defaults and their sources: the mbi plugin's energy module)",
    )


class MemorizationInference(Method):
    """Memorization-based inference of a trained recurrent attention model (RAM).

    The model must be a `classifier` with the RAM architecture (the plugin's `ram` factory,
    trainer `ram`). Tables are built from the RAM's computation over its training set (patch keys and
    hidden states quantized by k-means, see the plugin's tables module); inference on the test set
    then only compares keys and reads tables, each operation counted. Per table size it reports the
    test accuracy, the training accuracy (how well the tables memorize the set they were built
    from), entries, bytes, lookups and energy per inference; for the `clusters` table also
    the RAM's own accuracy and energy (its MACs counted by forward hooks), those of the `mlp` and
    `cnn` baselines, and the energy ratios the MBI paper reports (about 2.7x against an MLP and 83x
    against ResNet-20, both on compute-in-memory). Records: one per table size (`kind: table`) and
    one per network computed normally (`kind: network`).
    """

    name = "mbi.lookup"
    summary = "memorization-based (lookup-only) inference of a RAM: accuracy, table size, lookups, energy vs. compute"
    Params = LookupParams
    requires = frozenset({"classify", "train"})
    needs_dataset = False
    model_params = ("mlp", "cnn")
    metrics = (
        MetricSpec(
            "mbi_accuracy", "test accuracy of lookup inference (the `clusters` table)", None
        ),
        MetricSpec("ram_accuracy", "test accuracy of the RAM computed normally", None),
        MetricSpec("mlp_accuracy", "test accuracy of the MLP baseline", None),
        MetricSpec("cnn_accuracy", "test accuracy of the CNN baseline", None),
        MetricSpec("accuracy_gap", "RAM accuracy minus MBI accuracy", None),
        MetricSpec(
            "mbi_train_accuracy",
            "accuracy of lookup inference on the training set the tables were built from",
            True,
        ),
        MetricSpec(
            "ram_agreement", "share of test examples where MBI predicts the RAM's class", None
        ),
        MetricSpec(
            "table_entries", "entries of the lookup tables (keys, locations, transitions)", None
        ),
        MetricSpec("table_bytes", "bytes of the lookup tables", None),
        MetricSpec("lookups_per_inference", "key comparisons + table reads per inference", None),
        MetricSpec("key_comparisons_per_inference", "key comparisons per inference", None),
        MetricSpec("table_reads_per_inference", "table and image reads per inference", None),
        MetricSpec("energy_mbi_pj", "energy of one MBI inference (pJ)", None),
        MetricSpec("energy_ram_cim_pj", "energy of one RAM inference, MACs in memory (pJ)", None),
        MetricSpec("energy_mlp_cim_pj", "energy of one MLP inference, MACs in memory (pJ)", None),
        MetricSpec("energy_cnn_cim_pj", "energy of one CNN inference, MACs in memory (pJ)", None),
        MetricSpec("ram_cim_over_mbi", "RAM-CIM energy / MBI energy", None),
        MetricSpec("mlp_cim_over_mbi", "MLP-CIM energy / MBI energy (paper: about 2.7)", None),
        MetricSpec(
            "cnn_cim_over_mbi", "CNN-CIM energy / MBI energy (paper: about 83 for ResNet-20)", None
        ),
        MetricSpec("macs_ram", "multiply-accumulates of one RAM inference", None),
        MetricSpec("macs_mlp", "multiply-accumulates of one MLP inference", None),
        MetricSpec("macs_cnn", "multiply-accumulates of one CNN inference", None),
    )
    records = {
        "kind": "table (one table size) or network (a network computed normally)",
        "name": "table: SxP (hidden clusters x patch keys); network: ram, mlp or cnn",
        "headline": "table: whether it is the `clusters` table",
        "hidden_clusters": "table: hidden clusters",
        "patch_clusters": "table: patch keys",
        "correct": "test examples classified correctly",
        "total": "test examples",
        "accuracy": "correct / total",
        "train_correct": "table: training examples classified correctly by lookups",
        "train_total": "table: training examples",
        "ram_agreement": "table: share predicting the RAM's class",
        "entries": "table entries",
        "bytes": "table bytes",
        "key_comparisons": "per inference",
        "table_reads": "per inference",
        "lookups": "per inference",
        "macs": "network: MACs per inference",
        "energy_pj": "table: MBI energy per inference; network: {cim, digital_fp32, digital_int8} (pJ)",
    }

    def prepare(self, samples: Any, context: Context) -> list[dict[str, Any]]:
        params: LookupParams = context.params
        ram, data = _ram(context.model), context.model.data()
        ram_pred = context.model.predict(data.x_test)
        seen = trajectory(ram, data.x_train)
        rows = [
            self._table_row(
                ram, data, params, c, c == params.clusters, ram_pred, context.seed, seen
            )
            for c in _unique([params.clusters, *params.sweep])
        ]
        rows.append(_network_row("ram", ram, data.x_test, data.y_test, ram_pred, params.energy))
        for name in ("mlp", "cnn"):
            model_name = getattr(params, name)
            if model_name is not None:
                other = context.model_named(model_name)
                other_data = other.data()
                if not _same_test_set(other_data, data):
                    context.warn(
                        f"{name} baseline {model_name!r} is tested on other data than the RAM"
                    )
                network = other.networks[next(iter(other.networks))]
                rows.append(
                    _network_row(
                        name,
                        network,
                        other_data.x_test,
                        other_data.y_test,
                        other.predict(other_data.x_test),
                        params.energy,
                    )
                )
        return rows

    def _table_row(
        self,
        ram: RecurrentAttention,
        data: Any,
        params: LookupParams,
        clusters: Clusters,
        headline: bool,
        ram_pred: np.ndarray,
        seed: int,
        seen: Trajectory,
    ) -> dict[str, Any]:
        tables = build_tables(
            ram, data.x_train, clusters.hidden, clusters.patches, seed, params.levels, seen
        )
        pred, counts = lookup_inference(tables, data.x_test)
        train_pred, _ = lookup_inference(tables, data.x_train)
        per = counts.per_inference()
        return {
            "id": f"table-{clusters.hidden}x{clusters.patches}",
            "kind": "table",
            "name": f"{clusters.hidden}x{clusters.patches}",
            "headline": headline,
            "hidden_clusters": clusters.hidden,
            "patch_clusters": clusters.patches,
            "correct": int((pred == data.y_test).sum()),
            "total": len(pred),
            "accuracy": float((pred == data.y_test).mean()),
            "ram_agreement": float((pred == ram_pred).mean()),
            "train_correct": int((train_pred == data.y_train).sum()),
            "train_total": len(train_pred),
            "entries": tables.entries,
            "bytes": tables.bytes,
            "key_comparisons": per["key_comparisons"],
            "table_reads": per["table_reads"],
            "lookups": per["lookups"],
            "energy_pj": lookup_energy_pj(counts, params.energy),
        }

    def map(self, batch: list[dict[str, Any]], context: Context) -> list[dict[str, Any]]:
        return batch

    def reduce(self, records: list[dict[str, Any]], context: Context) -> list[Metric]:
        table = next(r for r in records if r["kind"] == "table" and r["headline"])
        networks = {r["name"]: r for r in records if r["kind"] == "network"}
        metrics = [
            rate_metric("mbi_accuracy", table["correct"], table["total"]),
            rate_metric("mbi_train_accuracy", table["train_correct"], table["train_total"]),
        ]
        metrics += [
            rate_metric(f"{n}_accuracy", r["correct"], r["total"]) for n, r in networks.items()
        ]
        metrics += [
            Metric(
                "accuracy_gap", networks["ram"]["accuracy"] - table["accuracy"], n=table["total"]
            ),
            Metric("ram_agreement", table["ram_agreement"], n=table["total"]),
            Metric("table_entries", table["entries"]),
            Metric("table_bytes", table["bytes"]),
            Metric("lookups_per_inference", table["lookups"]),
            Metric("key_comparisons_per_inference", table["key_comparisons"]),
            Metric("table_reads_per_inference", table["table_reads"]),
            Metric("energy_mbi_pj", table["energy_pj"]),
        ]
        for n, r in networks.items():
            metrics += [
                Metric(f"macs_{n}", r["macs"]),
                Metric(f"energy_{n}_cim_pj", r["energy_pj"]["cim"]),
                Metric(f"{n}_cim_over_mbi", r["energy_pj"]["cim"] / table["energy_pj"]),
            ]
        context.artifact(
            "energy_constants", {**context.params.energy.model_dump(), "sources": SOURCES}
        )
        return metrics

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        rows = list(records)
        tables = sorted((r for r in rows if r["kind"] == "table"), key=lambda r: r["bytes"])
        networks = {r["name"]: r for r in rows if r["kind"] == "network"}
        if not tables:
            return []
        sizes = [float(r["bytes"]) for r in tables]
        span = (min(sizes), max(sizes))
        accuracy = [Series("MBI (lookups)", sizes, [r["accuracy"] for r in tables])]
        accuracy += [
            Series(f"{n.upper()} (computed)", list(span), [r["accuracy"]] * 2)
            for n, r in networks.items()
        ]
        energy = [Series("MBI (lookups)", sizes, [r["energy_pj"] for r in tables])]
        energy += [
            Series(f"{n.upper()}-CIM", list(span), [r["energy_pj"]["cim"]] * 2)
            for n, r in networks.items()
        ]
        blocks: list[Any] = [
            LinePlot(
                "Accuracy against table size",
                "table bytes",
                "test accuracy",
                accuracy,
                y_range=(0.0, 1.0),
                markers=True,
                log_x=True,
            ),
            LinePlot(
                "Energy per inference against table size",
                "table bytes",
                "energy per inference (pJ)",
                energy,
                markers=True,
                log_x=True,
                log_y=True,
            ),
            Table(
                [
                    "table (hidden x patch keys)",
                    "entries",
                    "bytes",
                    "lookups / inference",
                    "test accuracy",
                    "training accuracy",
                    "agrees with RAM",
                    "energy (pJ)",
                ],
                [
                    [
                        r["name"],
                        r["entries"],
                        r["bytes"],
                        round(r["lookups"], 1),
                        round(r["accuracy"], 4),
                        round(r["train_correct"] / max(r["train_total"], 1), 4),
                        round(r["ram_agreement"], 4),
                        round(r["energy_pj"], 2),
                    ]
                    for r in tables
                ],
                title="Lookup tables: the accuracy / size / energy trade-off",
            ),
        ]
        headline = next((r for r in tables if r["headline"]), tables[-1])
        blocks.append(
            Table(
                [
                    "network",
                    "test accuracy",
                    "MACs / inference",
                    "energy CIM (pJ)",
                    "energy fp32 (pJ)",
                    "energy int8 (pJ)",
                    "CIM energy / MBI energy",
                    "paper",
                ],
                [
                    [
                        n,
                        round(r["accuracy"], 4),
                        r["macs"],
                        round(r["energy_pj"]["cim"], 2),
                        round(r["energy_pj"]["digital_fp32"], 1),
                        round(r["energy_pj"]["digital_int8"], 1),
                        round(r["energy_pj"]["cim"] / headline["energy_pj"], 3),
                        PAPER_RATIOS.get(f"{n}_cim_over_mbi"),
                    ]
                    for n, r in networks.items()
                ],
                title=f"Computed networks against MBI ({headline['name']} table, "
                f"{round(headline['energy_pj'], 2)} pJ per inference)",
            )
        )
        constants = evaluation.artifacts.get("energy_constants", {})
        if constants:
            blocks.append(
                Table(
                    ["constant", "value", "source"],
                    [
                        [
                            k,
                            constants[k],
                            SOURCES[k] if constants[k] == DEFAULTS[k] else "suite override",
                        ]
                        for k in SOURCES
                        if k in constants
                    ],
                    title="Energy constants",
                )
            )
        blocks.append(Text(DIFFERENCES))
        return [Section("Memorization-based inference", blocks)]


DIFFERENCES = (
    "How this differs from the MBI paper (Giacomini et al. 2023, MNIST: about 2.7x less energy than an MLP on "
    "compute-in-memory, 83x less than ResNet-20 on compute-in-memory). The paper's table layout, clustering, "
    "Bayesian-optimized settings and in-memory lookup circuit are not all stated; here the keys are binarised "
    "patches matched by Hamming distance in a content-addressable memory, the hidden state is a k-means cluster, "
    "the location is a function of the state, and each step is one CAM search plus a few SRAM reads. Energies "
    "are macro-level constants from three published designs at different nodes (0.18 um CAM, 45 nm SRAM and "
    "digital MACs, 7 nm CIM), with no data movement charged to the computed networks, so the ratios are "
    "orders of magnitude, not a reproduction of the paper's circuit-level figures. The RAM, MLP and CNN are "
    "trained here for minutes on two CPU cores, and may be trained on a subset of MNIST (see the suite)."
)


def _ram(model: Any) -> RecurrentAttention:
    network = model.networks[next(iter(model.networks))]
    if not isinstance(network, RecurrentAttention):
        raise UsageError(
            f"mbi.lookup needs a classifier with the RAM architecture "
            f"(factory memeval_plugins.mbi.ram:ram); the model is a {type(network).__name__}",
            field="model",
        )
    return network


def _same_test_set(a: Any, b: Any) -> bool:
    return np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_test, b.y_test)


def _unique(clusters: list[Clusters]) -> list[Clusters]:
    seen: dict[tuple[int, int], Clusters] = {}
    for c in clusters:
        seen.setdefault((c.hidden, c.patches), c)
    return list(seen.values())


def _network_row(
    name: str,
    network: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    pred: np.ndarray,
    energy: EnergyParams,
) -> dict[str, Any]:
    macs = count_macs(network, torch.tensor(np.asarray(x[:1], dtype=np.float32)))
    return {
        "id": f"network-{name}",
        "kind": "network",
        "name": name,
        "correct": int((pred == y).sum()),
        "total": len(y),
        "accuracy": float((pred == y).mean()),
        "macs": macs,
        "energy_pj": compute_energy_pj(macs, energy),
    }
