"""Report sections of the arithmetic methods: accuracy curves, accuracy by magnitude and carry
chain, the ERD layer x reference map."""

from __future__ import annotations

from typing import Any

from memeval.api import EvaluationResult, HeatMap, LinePlot, Section, Series, Table

CURVES = ("train sequence accuracy",)


def extrapolation_sections(evaluation: EvaluationResult) -> list[Section]:
    artifacts = evaluation.artifacts
    blocks: list[Any] = []
    curves = artifacts.get("curves") or {}
    if curves.get("epochs"):
        epochs = [float(e) for e in curves["epochs"]]
        names = [n for n in curves if n.endswith("accuracy")]
        series = [Series(n, epochs, [float(v) for v in curves[n]]) for n in names]
        blocks.append(
            LinePlot(
                "Accuracy over training (sequence accuracy = greedy's; token accuracy teacher-forced)",
                "epoch",
                "accuracy",
                series,
                y_range=(0.0, 1.0),
                markers=len(epochs) <= 30,
            )
        )
    for key, label in (
        ("by_magnitude", "bit length of the larger operand"),
        ("by_carry_chain", "longest carry chain of a + b"),
    ):
        table = by_table(artifacts.get(key) or [], label)
        if table is not None:
            blocks.append(table)
    return [Section("Arithmetic: compute or recall", blocks)] if blocks else []


def by_table(rows: list[dict[str, Any]], label: str) -> Table | None:
    if not rows:
        return None
    key = next(k for k in rows[0] if k not in ("held_out", "pairs", "sequence_accuracy"))
    cells: dict[int, dict[bool, dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault(row[key], {})[row["held_out"]] = row
    table_rows = []
    for value, parts in sorted(cells.items()):
        line: list[Any] = [value]
        for held in (True, False):
            part = parts.get(held)
            line += [part["pairs"], round(part["sequence_accuracy"], 4)] if part else [0, None]
        table_rows.append(line)
    return Table(
        [
            label,
            "held-out pairs",
            "held-out sequence accuracy",
            "training pairs",
            "training sequence accuracy",
        ],
        table_rows,
        title=f"Sequence accuracy by {label}",
    )


def erd_sections(evaluation: EvaluationResult) -> list[Section]:
    found = evaluation.artifacts.get("heatmap") or {}
    layers, references, values = (
        found.get("layers", []),
        found.get("references", []),
        found.get("r", []),
    )
    if not layers:
        return []
    depth = [float(i) for i in range(len(layers))]
    series = [
        Series(ref.replace("_", " "), *_defined(depth, [row[j] for row in values]))
        for j, ref in enumerate(references)
    ]
    plot = LinePlot(
        f"Correlation with reference distances by layer (0 = embedding, then {', '.join(layers[1:])})",
        "layer depth",
        "Pearson r",
        series,
        y_range=(-1.0, 1.0),
        markers=True,
    )
    heat = HeatMap(
        "ERD map: Pearson r of layer distances with reference distances",
        layers,
        [r.replace("_", " ") for r in references],
        values,
    )
    return [Section("Encoding-regression-decoding", [heat, plot])]


def _defined(x: list[float], y: list[float | None]) -> tuple[list[float], list[float]]:
    points = [(a, b) for a, b in zip(x, y, strict=True) if b is not None]
    return [a for a, _ in points], [float(b) for _, b in points]
