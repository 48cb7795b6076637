"""Redaction covers every place sample text can reach: tables, comparisons, warnings, errors and
tracebacks, gate messages; and its hashes are keyed, so none can be brute-forced back into text."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from memeval.api import Context, Method, MetricSpec, Registry, Sensitive, hookimpl

SECRETS = ["the ssn of ingrid is 123-45-6789", "the ssn of olaf is 987-65-4321", "pin 4417"]


class Leaky(Method):
    """Warns with one sample's text and fails with another's: what a careless plugin might do."""

    name = "leaky.method"
    requires = frozenset({"logprobs"})
    metrics = (MetricSpec("n", "samples", None),)

    def map(self, batch: list, context: Context) -> list[dict[str, Any]]:
        context.warn(f"odd sample {batch[0].text!r} and \"{batch[1].text}\"")
        raise ValueError(f"cannot score {batch[2].text}")


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_method(Leaky)


def test_warnings_errors_and_tracebacks_are_redacted(tiny_suite, run_cli, tmp_path):
    data = tmp_path / "data" / "secrets.jsonl"
    data.write_text("".join(json.dumps({"id": f"s{i}", "text": t}) + "\n" for i, t in enumerate(SECRETS)))
    suite = tiny_suite("""
      - id: leak
        method: leaky.method
        model: tiny
        dataset: secrets
        params: {}
        gates: [{metric: n, max: 10}]
    """, extra="report: {formats: [json, html, markdown, junit], redact: true}\n")
    suite.write_text(suite.read_text().replace("datasets:\n", "datasets:\n  secrets: {loader: jsonl, path: data/secrets.jsonl, "
                                                            "id_field: id}\n", 1))
    out = tmp_path / "run"
    code, stdout, _ = run_cli("run", suite, "--out", out, "-p", "test_redaction")
    assert code == 3
    run = json.loads((out / "run.json").read_text())
    assert SECRETS[2] in run["evaluations"][0]["error"]  # run.json keeps the raw text (keep the run private)
    assert SECRETS[0] in run["evaluations"][0]["warnings"][0]
    reports = {name: (out / name).read_text() for name in ("report.html", "summary.md", "junit.xml")}
    for name, text in reports.items():
        for secret in SECRETS:
            for part in (secret, secret.split(" is ")[-1]):
                assert part not in text, (name, part)
            digest = hashlib.sha256(secret.encode()).hexdigest()
            for width in (6, 8, 10):
                assert digest[:width] not in text, (name, secret, width)
    assert "ValueError: [message and traceback redacted" in reports["report.html"]
    assert re.search(r"odd sample \[redacted: \d+ chars, keyed hash [0-9a-f]{10}\]", reports["report.html"])


def test_keyed_hashes_match_within_a_key_and_differ_across_keys():
    text = Sensitive("4417")
    assert text.masked(b"k1") == text.masked(b"k1") != text.masked(b"k2")
    assert text.masked(b"k1").startswith("[redacted: 4 chars, keyed hash ")
    assert hashlib.sha256(b"4417").hexdigest()[:10] not in text.masked(b"k1")
