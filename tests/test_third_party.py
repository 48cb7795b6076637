"""A third-party plugin written against `memeval.api` alone: a method and a reporter defined in
this file, loaded with `-p test_third_party`, run and rendered end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from memeval.api import (
    TOP_N,
    Context,
    EvaluationResult,
    Method,
    MetricSpec,
    Params,
    Records,
    Registry,
    Section,
    Sensitive,
    Table,
    hookimpl,
    mean_metric,
)


class NatsPerCharParams(Params):
    scale: float = 1.0


class NatsPerChar(Method):
    """Negative log-likelihood of a text per character (a tokenizer-independent loss)."""

    name = "thirdparty.nats_per_char"
    summary = "total token NLL divided by the number of characters"
    Params = NatsPerCharParams
    requires = frozenset({"logprobs"})
    metrics = (MetricSpec("nats_per_char_mean", "mean over samples of NLL per character", False, "nats_per_char"),)

    def prepare(self, samples: list, context: Context) -> list[tuple[Any, list[int]]]:
        ids = context.model.tokenize([s.full_text for s in samples])
        return list(zip(samples, ids, strict=True))

    def size(self, unit: tuple[Any, list[int]]) -> int:
        return len(unit[1])

    def map(self, batch: list[tuple[Any, list[int]]], context: Context) -> list[dict[str, Any]]:
        scores = context.model.score([ids for _, ids in batch])
        return [{"id": sample.id, "text": sample.full_text, "n_tokens": len(ids) - 1,
                 "nats_per_char": -float(np.sum(s.logprob, dtype=np.float64)) / len(sample.full_text) * self.params.scale}
                for (sample, ids), s in zip(batch, scores, strict=True)]

    def reduce(self, records: list[dict[str, Any]], context: Context) -> list:
        context.artifact("n_chars", sum(len(r["text"]) for r in records))
        return [mean_metric("nats_per_char_mean", [r["nats_per_char"] for r in records], seed=context.seed)]

    @classmethod
    def report_sections(cls, evaluation: EvaluationResult, records: Records) -> list[Section]:
        best = records.top(TOP_N, key=lambda r: -r["nats_per_char"])
        return [Section("Third-party: best predicted per character",
                        [Table(["id", "nats/char", "text"], [[r["id"], r["nats_per_char"], Sensitive(r["text"])]
                                                             for r in best])])]


class CsvReporter:
    """metrics.csv: one row per metric."""

    def write(self, report: Any) -> Path:
        path = report.out_dir / "metrics.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle)
            out.writerow(["evaluation", "metric", "value"])
            for evaluation in report.run.evaluations:
                out.writerows([evaluation.id, m.name, repr(m.value)] for m in evaluation.metrics)
        return path


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_method(NatsPerChar)
    registry.add_reporter("csv", CsvReporter)


SUITE = """
  - id: per-char
    method: thirdparty.nats_per_char
    model: tiny
    dataset: train
    gates:
      - {metric: nats_per_char_mean, max: 100}
  - id: loss
    method: lm.loss
    model: tiny
    dataset: train
"""


def test_a_third_party_method_and_reporter_run_and_render(tiny_suite, run_cli, tmp_path):
    suite = tiny_suite(SUITE, extra="report: {formats: [json, html, csv], redact: true}\n")
    out = tmp_path / "run"
    code, stdout, stderr = run_cli("run", suite, "--out", out, "-p", "test_third_party")
    assert code == 0, stdout + stderr
    run = json.loads((out / "run.json").read_text())
    per_char = {json.loads(line)["id"]: json.loads(line) for line in (out / "records" / "per-char.jsonl").open()}
    losses = {json.loads(line)["id"]: json.loads(line) for line in (out / "records" / "loss.jsonl").open()}
    for sample_id, record in per_char.items():  # lm.loss is a mean over tokens: the same NLL, differently divided
        total = losses[sample_id]["loss"] * losses[sample_id]["n_tokens"]
        assert abs(record["nats_per_char"] - total / len(record["text"])) < 1e-9
    mean = np.mean([r["nats_per_char"] for r in per_char.values()])
    metric = run["evaluations"][0]["metrics"][0]
    assert metric["name"] == "nats_per_char_mean" and abs(metric["value"] - mean) < 1e-12
    assert metric["higher_is_worse"] is False and run["evaluations"][0]["artifacts"]["n_chars"] > 0
    rows = list(csv.reader((out / "metrics.csv").open()))
    assert rows[0] == ["evaluation", "metric", "value"]
    assert ["per-char", "nats_per_char_mean", repr(metric["value"])] in rows
    page = (out / "report.html").read_text()
    assert "Third-party: best predicted per character" in page
    first_text = next(iter(per_char.values()))["text"]
    assert first_text not in page  # redacted: the Sensitive cell is masked
    (out / "metrics.csv").unlink()
    code, stdout, _ = run_cli("report", out, "--format", "csv", "-p", "test_third_party")
    assert code == 0 and (out / "metrics.csv").read_text().count("\n") == len(rows)


def test_an_unknown_reporter_is_a_suite_error_with_a_suggestion(tiny_suite, run_cli):
    suite = tiny_suite(extra="report: {formats: [json, htlm]}\n")
    code, _, err = run_cli("validate", suite)
    assert code == 4 and "report.formats[1]" in err and "did you mean 'html'" in err


def test_the_terminal_reporter_cannot_be_asked_for_as_a_file(tiny_suite, run_cli):
    suite = tiny_suite(extra="report: {formats: [terminal]}\n")
    code, _, err = run_cli("validate", suite)
    assert code == 4 and "writes no file" in err
