"""Write the quickstart corpus: synthetic background text with planted canaries.

Each canary is "the access code for <name> is <6 digits>" and appears in the training corpus a known
number of times (1, 4 or 16). Controls use the same template with names and codes that never
appear in training. `members.jsonl` is the first 100 background documents of the training set
and `heldout.jsonl` 100 fresh sentences of the same grammar (a fair membership split);
`reference.jsonl` is a separate background corpus with no canaries, for a reference model.

For approximate memorization, the training corpus also holds documents of random words: some
repeated verbatim (`VERBATIM_COPIES` times) and some as near-duplicates (`NEAR_COPIES` copies, each
with `TYPOS` letters changed after the first `APPROX_PREFIX` characters, so no copy is the
original and the original itself never appears). `approx-members.jsonl` holds one training copy of
each (the first copy of a near-duplicate) and `approx-controls.jsonl` documents never seen.
Deterministic: rerunning writes the same files.

    python suites/data/make_quickstart.py [OUT_DIR]
"""

from __future__ import annotations

import json
import random
import string
import sys
from pathlib import Path

SUBJECTS = ["the miller", "a sailor", "the old baker", "my neighbour", "the young clerk", "a farmer",
            "the night guard", "our teacher", "the weaver", "a fisherman", "the mayor", "the smith"]
VERBS = ["carried", "painted", "sold", "mended", "counted", "hid", "found", "bought", "washed", "lost"]
OBJECTS = ["seven baskets", "a blue lantern", "the copper kettle", "two wooden chairs", "a bag of flour",
           "the broken clock", "three red apples", "an old map", "the iron gate", "a pair of boots"]
PLACES = ["near the harbor", "behind the mill", "at the market", "by the river", "in the square",
          "under the bridge", "beside the chapel", "on the hill"]
TIMES = ["before dawn", "after supper", "on monday", "in the rain", "at noon", "last winter", "every evening"]
NAMES = ["alice", "bruno", "chen", "dara", "emil", "fatima", "gustav", "hana", "ivan", "jules", "kofi", "lena",
         "marta", "nils", "olga", "pablo", "quinn", "rosa", "sven", "tariq", "uma", "viktor", "wanda", "yusuf"]
REPEATS = (1, 4, 16)
CANARIES_PER_LEVEL = 4
BACKGROUND_DOCS = 400
SPLIT_SIZE = 100
TEMPLATE = "the access code for {name} is {code}"
APPROX_WORDS = ["amber", "basket", "candle", "copper", "harbor", "lantern", "marble", "meadow",
                "orchard", "pepper", "quiet", "river", "saddle", "silver", "timber", "velvet",
                "willow", "winter", "yellow", "garden", "hollow", "ribbon", "thimble", "pebble",
                "falcon", "bridge", "cellar", "dragon", "ember", "fossil", "glacier", "hammer",
                "island", "jungle", "kettle", "ladder", "mirror", "needle", "oyster", "parrot",
                "quartz", "rocket", "spider", "tunnel", "violin", "walrus"]
APPROX_PREFIX, APPROX_SUFFIX = 24, 40  # characters (= tokens of the byte tokenizer)
NEAR_GROUPS, NEAR_COPIES, TYPOS = 6, 6, 2
VERBATIM_DOCS, VERBATIM_COPIES = 3, 6
APPROX_CONTROLS = 6


def sentence(rng: random.Random) -> str:
    return (f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
            f"{rng.choice(PLACES)} {rng.choice(TIMES)}.")


def planted(sample_id: str, name: str, code: str, repeats: int) -> dict:
    """A canary (or control) row: the text, and its split into prefix and secret for extraction."""
    text = TEMPLATE.format(name=name, code=code)
    return {"id": sample_id, "text": text, "prefix": text[: -len(code)], "name": name, "secret": code,
            "repeats": repeats}


def word_document(rng: random.Random) -> str:
    words: list[str] = []
    while len(" ".join(words)) < APPROX_PREFIX + APPROX_SUFFIX:  # no longer than the background
        words.append(rng.choice(APPROX_WORDS))
    return " ".join(words)


def with_typos(text: str, rng: random.Random) -> str:
    """`TYPOS` letters of the suffix region replaced by other letters."""
    chars = list(text)
    letters = [i for i in range(APPROX_PREFIX, APPROX_PREFIX + APPROX_SUFFIX) if chars[i] != " "]
    for i in rng.sample(letters, TYPOS):
        chars[i] = rng.choice([c for c in string.ascii_lowercase if c != chars[i]])
    return "".join(chars)


def approximate_corpus(rng: random.Random) -> tuple[list[dict], list[dict], list[dict]]:
    """(training documents, evaluated members, never-seen controls) for approximate memorization."""
    train, members = [], []
    for g in range(NEAR_GROUPS):
        original = word_document(rng)
        copies = [with_typos(original, rng) for _ in range(NEAR_COPIES)]
        train += [{"id": f"near-{g}-copy{k}", "text": text} for k, text in enumerate(copies)]
        members.append({"id": f"near-{g}", "text": copies[0], "kind": "near-duplicate", "copies": NEAR_COPIES,
                        "original": original})
    for v in range(VERBATIM_DOCS):
        text = word_document(rng)
        train += [{"id": f"verbatim-{v}-copy{k}", "text": text} for k in range(VERBATIM_COPIES)]
        members.append({"id": f"verbatim-{v}", "text": text, "kind": "verbatim", "copies": VERBATIM_COPIES})
    controls = [{"id": f"approx-control-{i}", "text": word_document(rng), "kind": "control", "copies": 0}
                for i in range(APPROX_CONTROLS)]
    return train, members, controls


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def main(out: Path) -> None:
    rng = random.Random(0)
    out.mkdir(parents=True, exist_ok=True)
    names = NAMES[:]
    rng.shuffle(names)
    canaries, controls = [], []
    for level, repeats in enumerate(REPEATS):
        for j in range(CANARIES_PER_LEVEL):
            name = names[level * CANARIES_PER_LEVEL + j]
            code = f"{rng.randrange(10**6):06d}"
            canaries.append(planted(f"canary-{name}", name, code, repeats))
    for name in names[len(REPEATS) * CANARIES_PER_LEVEL:]:
        code = f"{rng.randrange(10**6):06d}"
        controls.append(planted(f"control-{name}", name, code, 0))
    background = [{"id": f"doc-{i}", "text": sentence(rng)} for i in range(BACKGROUND_DOCS)]
    train = list(background)
    for canary in canaries:
        train += [{"id": f"{canary['id']}-copy{k}", "text": canary["text"]} for k in range(canary["repeats"])]
    rng.shuffle(train)
    approx_rng = random.Random(1)  # its own generator: the files above stay as they were
    approx_train, approx_members, approx_controls = approximate_corpus(approx_rng)
    for doc in approx_train:
        train.insert(approx_rng.randrange(len(train) + 1), doc)
    seen = {doc["text"] for doc in background}
    held_out = []
    while len(held_out) < SPLIT_SIZE:
        text = sentence(rng)
        if text not in seen:
            seen.add(text)
            held_out.append({"id": f"heldout-{len(held_out)}", "text": text})
    reference = [{"id": f"ref-{i}", "text": sentence(rng)} for i in range(BACKGROUND_DOCS)]
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "canaries.jsonl", canaries)
    write_jsonl(out / "controls.jsonl", controls)
    write_jsonl(out / "heldout.jsonl", held_out)
    write_jsonl(out / "members.jsonl", background[:SPLIT_SIZE])
    write_jsonl(out / "reference.jsonl", reference)
    write_jsonl(out / "approx-members.jsonl", approx_members)
    write_jsonl(out / "approx-controls.jsonl", approx_controls)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "quickstart")
