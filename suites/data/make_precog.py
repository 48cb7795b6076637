"""Write the PreCog corpus: a pre-training corpus in which downstream examples appear a known
number of times, and the downstream set.

Documents are 8 random words: 4 from one topic (animals or tools, the downstream label) and 4
common words, in random order. The pre-training corpus holds `BACKGROUND` such documents that are
not downstream examples, plus each downstream example of exposure e copied e times (e in 0, 1, 5,
20). `downstream.jsonl` holds every downstream example once with its `topic`, its `label` (the
topic, flipped for a random `LABEL_NOISE` share of the examples, so that no downstream model is
always right), `exposure` and `exposure_group` fields. Deterministic: rerunning writes the same files.

    python suites/data/make_precog.py [OUT_DIR] [PER_GROUP] [BACKGROUND]
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ANIMALS = ["otter", "heron", "badger", "lynx", "falcon", "marten", "stoat", "viper", "gecko", "ibis", "tapir", "okapi", "bison", "moose", "walrus", "ferret", "condor", "jackal", "lemur", "mole", "newt", "puffin", "raven", "shrew"]
TOOLS = ["chisel", "wrench", "hammer", "trowel", "sickle", "plane", "rasp", "awl", "anvil", "lathe", "vice", "pliers", "spanner", "mallet", "saw", "drill", "file", "clamp", "level", "shears", "scythe", "adze", "auger", "gimlet"]
COMMON = ["red", "blue", "old", "new", "small", "large", "quiet", "loud", "early", "late", "near", "far", "green", "grey", "bright", "dark", "north", "south", "east", "west", "warm", "cold", "soft", "hard", "round", "flat", "high", "low", "swift", "slow"]
EXPOSURES = (0, 1, 5, 20)
LABEL_NOISE = 0.15
PER_GROUP = 24
BACKGROUND = 300


def document(rng: random.Random, topic: list[str]) -> str:
    words = rng.sample(topic, 4) + rng.sample(COMMON, 4)
    rng.shuffle(words)
    return " ".join(words)


def build(per_group: int = PER_GROUP, background: int = BACKGROUND, seed: int = 0
          ) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    seen: set[str] = set()

    def fresh(topic: list[str]) -> str:
        while (text := document(rng, topic)) in seen:
            pass
        seen.add(text)
        return text

    downstream = []
    for exposure in EXPOSURES:
        for i in range(per_group):
            topic = "animal" if i % 2 == 0 else "tool"
            text = fresh(ANIMALS if topic == "animal" else TOOLS)
            label = topic if rng.random() >= LABEL_NOISE else {"animal": "tool", "tool": "animal"}[topic]
            downstream.append({"id": f"e{exposure}-{i}", "text": text, "topic": topic, "label": label,
                               "exposure": exposure, "exposure_group": str(exposure)})
    corpus = [{"id": f"bg-{i}", "text": fresh(ANIMALS if i % 2 == 0 else TOOLS)} for i in range(background)]
    corpus += [{"id": f"{d['id']}-copy{c}", "text": d["text"]} for d in downstream for c in range(d["exposure"])]
    rng.shuffle(corpus)
    return corpus, downstream


def write(out: Path, per_group: int = PER_GROUP, background: int = BACKGROUND) -> None:
    corpus, downstream = build(per_group, background)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("corpus.jsonl", corpus), ("downstream.jsonl", downstream)):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    args = sys.argv[1:]
    write(Path(args[0]) if args else Path(__file__).parent / "precog", *(int(a) for a in args[1:3]))
