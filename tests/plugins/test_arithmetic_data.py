"""The `arithmetic` dataset loader, checked against independent computations: split sizes, the
`value` square, the `token` split's order by Hamming distance, bit encodings, carry chains."""

from __future__ import annotations

import itertools

import pytest

from memeval.errors import UsageError
from memeval.suite import DatasetSpec
from memeval_plugins.arithmetic.data import (
    TaskConfig,
    carry_chain,
    from_bits,
    load,
    make_task,
    parse_config,
    to_bits,
)


def rows(operation: str, split: str = "all", **config):
    return make_task(operation, TaskConfig(**config)).rows(split)


@pytest.mark.parametrize("bits", [4, 5, 7])
@pytest.mark.parametrize("holdout", ["random", "value", "token"])
def test_each_split_holds_out_a_quarter_and_train_and_test_partition_all_pairs(bits, holdout):
    task = make_task("add", TaskConfig(bits=bits, holdout=holdout))
    train, test = task.rows("train"), task.rows("test")
    assert len(test) == 4**bits // 4 and len(train) == 3 * 4**bits // 4
    if bits == 7:
        assert len(test) == 4096 and len(train) + len(test) == 16384
    pairs = {(r["a"], r["b"]) for r in train} | {(r["a"], r["b"]) for r in test}
    assert pairs == set(itertools.product(range(2**bits), repeat=2))
    assert all(r["held_out"] for r in test) and not any(r["held_out"] for r in train)


def test_value_split_holds_out_exactly_the_central_square_and_keeps_every_operand_in_training():
    test = rows("add", "test", bits=7, holdout="value")
    assert {(r["a"], r["b"]) for r in test} == {
        (a, b) for a in range(32, 96) for b in range(32, 96)
    }
    train = rows("add", "train", bits=7, holdout="value")
    assert {r["a"] for r in train} == set(range(128)) and {r["b"] for r in train} == set(range(128))


def test_token_split_holds_out_the_inputs_nearest_the_centre_in_hamming_distance():
    centre = "1010101+0101010"
    every = rows("add", "all", bits=7, holdout="token", centre=centre)
    # Independently: the input string's characters against the centre's, character by character.
    distance = {
        r["id"]: sum(x != y for x, y in zip(r["prompt"][:15], centre, strict=True)) for r in every
    }
    held = [r for r in every if r["held_out"]]
    kept = [r for r in every if not r["held_out"]]
    assert max(distance[r["id"]] for r in held) <= min(distance[r["id"]] for r in kept)
    test = rows("add", "test", bits=7, holdout="token", centre=centre)
    ordered = sorted(test, key=lambda r: (distance[r["id"]], r["a"] * 128 + r["b"]))
    assert ordered[0]["prompt"] == centre + "="  # distance 0: the centre itself
    assert [distance[r["id"]] for r in ordered[:15]] == [0] + [1] * 14  # its 14 one-bit neighbours
    # The centre is written in the input's bit order: 1010101 LSB-first is 1 + 4 + 16 + 64.
    assert (ordered[0]["a"], ordered[0]["b"]) == (85, 42)
    # Ties at the boundary distance are broken by pair index, so the split is deterministic.
    boundary = max(distance[r["id"]] for r in held)
    at_boundary = [r["a"] * 128 + r["b"] for r in every if distance[r["id"]] == boundary]
    chosen = {r["a"] * 128 + r["b"] for r in held if distance[r["id"]] == boundary}
    assert chosen == set(sorted(at_boundary)[: len(chosen)])


def test_default_centre_alternates_bits_and_a_bad_centre_names_the_expected_shape():
    test = rows("add", "test", bits=5, holdout="token")
    assert any(r["prompt"] == "10101+01010=" for r in test)
    with pytest.raises(ValueError, match="centre must be 5 bits"):
        TaskConfig(bits=5, holdout="token", centre="101+010")


def test_random_split_depends_on_its_seed_only():
    first = {r["id"] for r in rows("add", "test", bits=5, seed=1)}
    assert first == {r["id"] for r in rows("add", "test", bits=5, seed=1)}
    assert first != {r["id"] for r in rows("add", "test", bits=5, seed=2)}


@pytest.mark.parametrize("order", ["lsb", "msb"])
def test_bits_round_trip_and_prompts_and_targets_match_python_formatting(order):
    values = list(range(300))
    assert [from_bits(text, order) for text in to_bits(values, 9, order)] == values
    for r in rows("add", bits=4, order=order) + rows("mul", bits=4, order=order):
        msb = [
            format(r["a"], "04b"),
            format(r["b"], "04b"),
            format(
                r["a"] + r["b"] if r["operation"] == "add" else r["a"] * r["b"],
                "05b" if r["operation"] == "add" else "08b",
            ),
        ]
        expect = msb if order == "msb" else [s[::-1] for s in msb]
        symbol = "+" if r["operation"] == "add" else "*"
        assert r["prompt"] == f"{expect[0]}{symbol}{expect[1]}="
        assert r["target"] == expect[2] and r["text"] == r["prompt"] + r["target"]
    with pytest.raises(ValueError):
        from_bits("10a1")


def test_addition_width_is_n_plus_one_and_multiplication_2n_at_seven_bits():
    add, mul = rows("add", bits=7), rows("mul", bits=7)
    assert {len(r["target"]) for r in add} == {8} and {len(r["target"]) for r in mul} == {14}
    assert len(add) == 16384


def test_R_maps_addition_inputs_to_fixed_random_outputs():
    control, add = rows("R", bits=5), rows("add", bits=5)
    assert [r["prompt"] for r in control] == [r["prompt"] for r in add]
    values = [r["value"] for r in control]
    assert values == [r["value"] for r in rows("R", bits=5)]  # fixed
    assert values != [r["value"] for r in rows("R", bits=5, seed=1)]
    assert min(values) >= 0 and max(values) < 64 and len(set(values)) > 50
    sums = sum(r["value"] == r["a"] + r["b"] for r in control)
    assert sums < 0.05 * len(control)  # no rule: the random outputs rarely equal the sum


def test_carry_chain_matches_schoolbook_addition():
    def schoolbook(a: int, b: int) -> int:
        carry = run = longest = 0
        for i in range(12):
            total = ((a >> i) & 1) + ((b >> i) & 1) + carry
            carry = total >> 1
            run = run + 1 if carry else 0
            longest = max(longest, run)
        return longest

    import numpy as np

    a, b = np.divmod(np.arange(64 * 64), 64)
    assert carry_chain(a, b).tolist() == [
        schoolbook(int(x), int(y)) for x, y in zip(a, b, strict=True)
    ]
    assert carry_chain(np.array([1]), np.array([63])).tolist() == [6]


def test_loader_reads_path_config_and_split_and_names_bad_fields():
    spec = DatasetSpec(
        loader="arithmetic",
        path="mul",
        config="bits=4, holdout=value, order=msb",
        split="test",
        prefix_field="prompt",
        suffix_field="target",
    )
    data = load(spec, None)
    assert len(data) == 64 and set(data.column_names) >= {
        "prompt",
        "target",
        "a",
        "b",
        "held_out",
        "carry_chain",
    }
    assert data[0]["prompt"] == "0100*0100=" and data[0]["target"] == "00010000"
    for bad, field in (
        (dict(path="sub"), "path"),
        (dict(split="validation"), "split"),
        (dict(config="bits=1"), "bits"),
        (dict(config="holdout=middle"), "holdout"),
        (dict(config="bits"), "key=value"),
        (dict(config="colour=red"), "colour"),
    ):
        with pytest.raises(UsageError, match=field):
            load(DatasetSpec(**{"loader": "arithmetic", "path": "add", **bad}), None)
    assert parse_config(None) == TaskConfig()


BAD_SUITE = """
memeval: 1
suite: bad
datasets:
  train: {{loader: arithmetic, path: add, config: "{config}", split: train, prefix_field: prompt,
          suffix_field: target}}
models:
  m: {{adapter: seq2seq, dataset: train, architecture: {architecture}}}
evaluations:
  - {{id: e, method: arithmetic.extrapolation, model: m, dataset: train, params: {params}}}
"""


@pytest.mark.parametrize(
    ("config", "architecture", "params", "expected"),
    [
        ("bits=1", "{}", "{}", "bits"),
        ("bits=4, holdout=middle", "{}", "{}", "holdout"),
        ("bits=4", "{d_model: 60, n_head: 8}", "{}", "multiple of n_head"),
        ("bits=4", "{}", "{template: '{a} plus {c}'}", "unknown template field"),
    ],
)
def test_bad_suite_input_is_a_usage_error_naming_the_field(
    tmp_path, run_cli, config, architecture, params, expected
):
    suite = tmp_path / "suite.yaml"
    suite.write_text(BAD_SUITE.format(config=config, architecture=architecture, params=params))
    code, out, err = run_cli(
        "run", suite, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache"
    )
    assert code == 4 and expected in out + err, out + err
