"""`openai-compat` against a real HTTP server on loopback (FastAPI + uvicorn) serving the tiny
recipe-trained checkpoint: the same results as the in-process adapter on the same weights, and a
server that fails on purpose for the retries, timeouts and error messages."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from helpers import tiny_texts, write_jsonl
from openai_server import Faults, Served, make_app

from memeval.cache import OutputCache
from memeval.errors import UsageError
from memeval.models import AdapterContext, HFCausal
from memeval.models.openai_compat import OpenAICompat, ServerError
from memeval_plugins.membership import attack_score

SECRET = "sk-test-never-written-7f3a"
KEY_ENV = "MEMEVAL_TEST_OPENAI_KEY"


def adapter_context(tmp_path):
    cache = OutputCache(tmp_path / "cache")
    return AdapterContext(base_dir=tmp_path, seed=0, cache=cache, cache_dir=tmp_path / "cache",
                          load_dataset=lambda name: [])


@pytest.fixture(scope="module")
def local_model(tiny_model_dir, tmp_path_factory):
    context = adapter_context(tmp_path_factory.mktemp("served"))
    return HFCausal(HFCausal.Params(path=str(tiny_model_dir), batch_size=4), context)


@pytest.fixture(scope="module")
def server(local_model):
    served = Served(make_app(local_model, "tiny", "rev-1", api_key=SECRET))
    yield served
    served.stop()


@pytest.fixture
def faulty(local_model):
    """A server whose faults a test plants (`served.faults`)."""
    faults = Faults()
    served = Served(make_app(local_model, "tiny", "rev-1", faults=faults))
    served.faults = faults
    yield served
    served.stop()


def client(url, tmp_path, **params):
    params = {"base_url": url, "model": "tiny", "backoff": 0.01, "timeout": 10, **params}
    return OpenAICompat(OpenAICompat.Params.model_validate(params), adapter_context(tmp_path))


def close(a, b, path="record"):
    """Equal, floats to float32 precision (the server's batches are not the in-process ones)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.slow
def test_served_model_gives_the_in_process_results(server, tiny_model_dir, tmp_path, run_cli, cache_dir,
                                                   monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    write_jsonl(tmp_path / "train.jsonl", [{"id": f"t{i}", "text": t} for i, t in enumerate(tiny_texts())])
    write_jsonl(tmp_path / "unseen.jsonl", [{"id": f"u{i}", "text": f"Zq{i} wx vb {i * 7}"} for i in range(12)])
    models = {"local": {"adapter": "hf-causal", "path": str(tiny_model_dir), "batch_size": 4},
              "served": {"adapter": "openai-compat", "base_url": server.url, "model": "tiny", "api_key_env": KEY_ENV,
                         "tokenizer": str(tiny_model_dir), "batch_size": 4, "concurrency": 3}}
    evaluations = []
    for name in models:
        evaluations += [
            {"id": f"extract-{name}", "method": "extraction.discoverable", "model": name, "dataset": "train",
             "params": {"prefix_tokens": 6, "suffix_tokens": 8}},
            {"id": f"members-{name}", "method": "membership.attack", "model": name, "dataset": "train",
             "params": {"non_members": "unseen", "attacks": ["loss", "zlib", "lowercase", "min_k"]}}]
    suite = {"memeval": 1, "suite": "served", "seed": 0, "models": models, "evaluations": evaluations,
             "datasets": {"train": {"loader": "jsonl", "path": "train.jsonl", "id_field": "id"},
                          "unseen": {"loader": "jsonl", "path": "unseen.jsonl", "id_field": "id"}}}
    (tmp_path / "suite.yaml").write_text(json.dumps(suite))
    code, _, err = run_cli("run", tmp_path / "suite.yaml", "--out", tmp_path / "run", "-q")
    assert code == 0, err
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    by_id = {e["id"]: e for e in run["evaluations"]}
    for kind in ("extract", "members"):
        local, served = by_id[f"{kind}-local"], by_id[f"{kind}-served"]
        assert served["status"] == "passed" and served["model_calls"]["computed"] > 0
        assert {m["name"] for m in local["metrics"]} == {m["name"] for m in served["metrics"]}
        for a, b in zip(local["metrics"], served["metrics"], strict=True):
            close(a["value"], b["value"], a["name"])
        records = [[json.loads(line) for line in (tmp_path / "run" / "records" / f"{kind}-{name}.jsonl").open()]
                   for name in ("local", "served")]
        assert len(records[0]) == len(records[1]) > 10
        for a, b in zip(*(sorted(r, key=lambda r: (r["id"], r.get("member"))) for r in records), strict=True):
            close(a, b, a["id"])
        if kind == "extract":  # generations that differ between samples: equality is not of constants
            assert len({tuple(r["generated_ids"]) for r in records[0]}) > 5
    identity = run["models"]["served"]
    assert (identity["base_url"], identity["model"], identity["revision"]) == (server.url, "tiny", "rev-1")
    leaked = [p.name for p in (tmp_path / "run").rglob("*") if p.is_file() and SECRET in p.read_text(errors="replace")]
    assert not leaked, f"the API key was written to {leaked}"


def test_scores_and_greedy_tokens_match_the_checkpoint(server, local_model, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    remote = client(server.url, tmp_path, api_key_env=KEY_ENV, batch_size=2, concurrency=2)
    sequences = [local_model.tokenize([t])[0] for t in tiny_texts(5)]
    for mine, theirs in zip(local_model.score(sequences), remote.score(sequences), strict=True):
        np.testing.assert_allclose(theirs.logprob, mine.logprob, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(theirs.argmax, mine.argmax)
        np.testing.assert_allclose(theirs.margin, mine.margin, rtol=1e-3, atol=1e-5)
        assert np.isnan(theirs.mean_logprob).all()  # not given by a server: never made up
    prompts = [s[:5] for s in sequences]
    assert remote.generate(prompts, 7) == local_model.generate(prompts, 7)
    with pytest.raises(UsageError, match="min_k_plus_plus.*whole vocabulary"):
        attack_score("min_k_plus_plus", remote.score(sequences[:1])[0], "text", 0.2, None, None)
    monkeypatch.setenv(KEY_ENV, "wrong")
    with pytest.raises(ServerError, match="HTTP 401.*1 attempt\\)"):
        remote.score(sequences[:1])


def test_failures_are_retried_with_backoff_then_named(faulty, tmp_path):
    sequences = [[1, 2, 3, 4]] * 3
    faulty.faults.fail_first, faulty.faults.status = 2, 503
    started = time.perf_counter()
    scores = client(faulty.url, tmp_path, backoff=0.1, max_retries=3).score(sequences)
    assert len(scores) == 3 and faulty.faults.seen == 3  # two refusals, then the answer
    assert time.perf_counter() - started >= 0.1 + 0.2  # backoff doubles: 0.1 s, then 0.2 s

    faulty.faults.seen, faulty.faults.fail_first, faulty.faults.status = 0, 100, 429
    with pytest.raises(ServerError, match="HTTP 429.*3 attempts"):
        client(faulty.url, tmp_path, max_retries=2).score(sequences)
    faulty.faults.seen, faulty.faults.status = 0, 400  # a bad request is not retried
    with pytest.raises(ServerError, match="HTTP 400.*1 attempt\\)"):
        client(faulty.url, tmp_path, max_retries=2).score(sequences)
    assert faulty.faults.seen == 1


def test_timeouts_concurrency_and_missing_capabilities(faulty, tmp_path):
    faults = faulty.faults
    faults.delay = 0.6
    started = time.perf_counter()
    with pytest.raises(ServerError, match="timeout of 0.2 s \\(2 attempts\\)"):
        client(faulty.url, tmp_path, timeout=0.2, max_retries=1).score([[1, 2, 3]])
    assert time.perf_counter() - started < 1.0
    while faults.inflight:  # the abandoned requests are still sleeping on the server
        time.sleep(0.05)
    faults.delay, faults.peak = 0.2, 0
    client(faulty.url, tmp_path, batch_size=1, concurrency=2).score([[1, 2, 3]] * 6)
    assert faults.peak == 2  # six requests, never more than two at once
    faults.delay, faults.no_logprobs = 0.0, True
    with pytest.raises(UsageError, match="no log-probs.*'logprobs' capability"):
        client(faulty.url, tmp_path).score([[1, 2, 3]])
    with pytest.raises(UsageError, match="names no tokenizer"):
        client(faulty.url, tmp_path).tokenize(["hello"])
    with pytest.raises(UsageError, match="does not serve 'other'.*'tiny'"):
        client(faulty.url, tmp_path, model="other").identity()
    with pytest.raises(UsageError, match="sampled generation"):
        client(faulty.url, tmp_path).generate([[1, 2]], 3, do_sample=True)
    assert math.isfinite(client(faulty.url, tmp_path, max_retries=0).context_length or 0)
