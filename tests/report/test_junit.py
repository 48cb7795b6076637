"""junit.xml: a testsuite per evaluation, a testcase per gate, metrics as properties."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from helpers import read_run

from memeval.report.junit import xml_text


def properties(element) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in element.findall("properties/property")}


def test_junit_mirrors_run_json(tiny_suite, run_cli, tmp_path):
    suite = tiny_suite("""
      - id: train-loss
        method: lm.loss
        model: tiny
        dataset: train
        gates:
          - {metric: loss_mean, max: 100}
          - {metric: perplexity_mean, max: 1.0}
      - id: unseen-loss
        method: lm.loss
        model: tiny
        dataset: unseen
    """, extra="report: {junit: true}\n")
    assert run_cli("run", suite, "--out", tmp_path / "run")[0] == 1
    run = read_run(tmp_path / "run")
    root = ET.parse(tmp_path / "run" / "junit.xml").getroot()
    assert root.tag == "testsuites" and root.get("tests") == "3" and root.get("failures") == "1"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"tiny.train-loss", "tiny.unseen-loss"}
    for evaluation in run["evaluations"]:
        element = suites[f"tiny.{evaluation['id']}"]
        props = properties(element)
        for metric in evaluation["metrics"]:
            assert float(props[f"metric.{metric['name']}"]) == metric["value"]
            assert float(props[f"metric.{metric['name']}.ci_low"]) == metric["ci_low"]
    cases = suites["tiny.train-loss"].findall("testcase")
    assert [c.get("name") for c in cases] == ["loss_mean <= 100", "perplexity_mean <= 1"]
    assert cases[0].find("failure") is None
    failure = cases[1].find("failure")
    assert failure is not None and "above the maximum 1" in failure.get("message")
    gate_props = properties(cases[1])
    assert gate_props["threshold"] == "1.0" and float(gate_props["value"]) > 1.0 and "ci_low" in gate_props
    # An evaluation without gates is one test case that passes when it runs.
    ungated = suites["tiny.unseen-loss"].findall("testcase")
    assert len(ungated) == 1 and ungated[0].find("failure") is None and ungated[0].find("error") is None


def test_xml_text_drops_what_xml_cannot_hold():
    assert xml_text("a\x00b\x1bc\td\n") == "a\ufffdb\ufffdc\td\n"
    assert xml_text("ok ✓ 𝄞") == "ok ✓ 𝄞"
