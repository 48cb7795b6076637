"""Builtin `junit` reporter: `junit.xml` for CI test dashboards. A testsuite per evaluation, a
testcase per gate (failure = the gate failed, error = the evaluation errored), the evaluation's
metrics as testsuite properties and the gate's metric, CI and threshold as testcase properties."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from memeval import hookimpl
from memeval.files import atomic_writer
from memeval.registry import Registry
from memeval.report.base import ReportContext, format_value
from memeval.results import EvaluationResult, GateVerdict, Metric

NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """XML 1.0 cannot hold some characters at all (NUL, most C0 controls): replace them."""
    return NOT_XML.sub("\ufffd", text)


def _number(value: float | None) -> str:
    return "nan" if value is None or (isinstance(value, float) and not math.isfinite(value)) else repr(float(value))


def _properties(parent: ET.Element, values: dict[str, str]) -> None:
    properties = ET.SubElement(parent, "properties")
    for name, value in values.items():
        ET.SubElement(properties, "property", name=xml_text(name), value=xml_text(value))


def metric_properties(metric: Metric, prefix: str = "") -> dict[str, str]:
    values = {f"{prefix}{metric.name}": _number(metric.value)}
    if metric.ci_low is not None and metric.ci_high is not None:
        values[f"{prefix}{metric.name}.ci_low"] = _number(metric.ci_low)
        values[f"{prefix}{metric.name}.ci_high"] = _number(metric.ci_high)
    return values


def gate_case(suite: ET.Element, evaluation: EvaluationResult, gate: GateVerdict, classname: str,
              scrub: Callable[[str | None], str]) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=f"{gate.metric} {gate.rule}".strip(),
                         time="0")
    values = {"metric": gate.metric, "value": _number(gate.value), "rule": gate.rule}
    metric = evaluation.metric(gate.metric)
    if metric is not None and metric.ci_low is not None:
        values.update(ci_low=_number(metric.ci_low), ci_high=_number(metric.ci_high))
    if gate.threshold is not None:
        values["threshold"] = _number(gate.threshold)
    if gate.baseline_value is not None:
        values["baseline_value"] = _number(gate.baseline_value)
    _properties(case, values)
    if evaluation.status == "error":
        ET.SubElement(case, "error", message="the evaluation errored").text = xml_text(scrub(evaluation.error))
    elif not gate.passed:
        ET.SubElement(case, "failure", message=xml_text(scrub(gate.message)), type="GateFailed").text = (
            f"{gate.metric} = {format_value(gate.value)} ({gate.rule})")


def evaluation_suite(root: ET.Element, evaluation: EvaluationResult, suite_name: str,
                     scrub: Callable[[str | None], str]) -> None:
    classname = f"{suite_name}.{evaluation.id}"
    errored = evaluation.status == "error"
    gates = evaluation.gates or [GateVerdict("evaluation", not errored, "runs", None, errored=errored)]
    errors = sum(g.errored for g in gates)
    failures = sum(not g.passed and not g.errored for g in gates)
    suite = ET.SubElement(root, "testsuite", name=classname, tests=str(len(gates)), failures=str(failures),
                          errors=str(errors), skipped="0", time=f"{evaluation.seconds:.3f}",
                          timestamp=evaluation.started_at or "")
    values = {"method": evaluation.method, "model": evaluation.model or "", "dataset": evaluation.dataset or "",
              "n_samples": str(evaluation.n_samples)}
    for metric in evaluation.metrics:
        values.update(metric_properties(metric, "metric."))
    _properties(suite, values)
    for gate in gates:
        gate_case(suite, evaluation, gate, classname, scrub)


class JunitReporter:
    """junit.xml: a testsuite per evaluation, a testcase per gate, metrics as properties."""

    filename = "junit.xml"

    def write(self, report: ReportContext) -> Path:
        run = report.run
        name = run.suite.get("name", "memeval")
        root = ET.Element("testsuites", name=f"memeval {name}", time=f"{run.seconds:.3f}")
        for evaluation in run.evaluations:
            evaluation_suite(root, evaluation, name, report.scrub)
        root.set("tests", str(sum(int(s.get("tests")) for s in root)))
        root.set("failures", str(sum(int(s.get("failures")) for s in root)))
        root.set("errors", str(sum(int(s.get("errors")) for s in root)))
        ET.indent(root)
        path = report.out_dir / self.filename
        with atomic_writer(path, "wb") as handle:
            ET.ElementTree(root).write(handle, encoding="utf-8", xml_declaration=True)
        return path


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_reporter("junit", JunitReporter)
