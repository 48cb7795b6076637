"""The SQLite output cache: modes, keys and file digests."""

from __future__ import annotations

import numpy as np
import pytest

from memeval.cache import OutputCache, output_key
from memeval.errors import CacheMiss
from memeval.models.base import CachedCausalLM, TokenScores


def test_keys_depend_on_model_op_params_and_input():
    base = output_key("m", "score", {}, [1, 2, 3])
    assert base == output_key("m", "score", {}, [1, 2, 3])
    assert len({base, output_key("m2", "score", {}, [1, 2, 3]), output_key("m", "generate", {}, [1, 2, 3]),
                output_key("m", "score", {"a": 1}, [1, 2, 3]), output_key("m", "score", {}, [1, 2, 4])}) == 5


def test_modes(tmp_path):
    cache = OutputCache(tmp_path)
    cache.put_many("m", "score", [("k", b"v")])
    assert cache.get_many(["k", "x"]) == {"k": b"v"}
    assert OutputCache(tmp_path, "refresh").get_many(["k"]) == {}
    assert OutputCache(tmp_path, "only").get_many(["k"]) == {"k": b"v"}
    off = OutputCache(tmp_path, "off")
    off.put_many("m", "score", [("z", b"v")])
    assert off.get_many(["k"]) == {} and OutputCache(tmp_path).get_many(["z"]) == {}
    with pytest.raises(CacheMiss):
        OutputCache(tmp_path, "only").require(1, "things")


def test_file_digest_is_remembered_until_the_file_changes(tmp_path):
    cache = OutputCache(tmp_path / "c")
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 100)
    first = cache.file_digest(f)
    assert cache.file_digest(f) == first
    f.write_bytes(b"b" * 101)
    assert cache.file_digest(f) != first


class CountingModel:
    identity_key = "fake"

    def __init__(self):
        self.calls = []

    def score(self, sequences):
        self.calls.append(len(sequences))
        return [TokenScores(*(np.full(len(s) - 1, float(sum(s))) for _ in range(5))) for s in sequences]


def test_cached_model_computes_only_misses_and_shares_across_callers(tmp_path):
    model = CountingModel()
    cached = CachedCausalLM(model, OutputCache(tmp_path))
    first = cached.score([[1, 2], [3, 4, 5]])
    again = CachedCausalLM(model, OutputCache(tmp_path)).score([[3, 4, 5], [1, 2], [7, 8]])
    assert model.calls == [2, 1]
    assert again[0].logprob.tolist() == first[1].logprob.tolist() == [12.0, 12.0]
    assert cached.counter.snapshot() == {"computed": 2, "cache_hits": 0, "batches": 1}
