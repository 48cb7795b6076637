"""The sharing plan: evaluations of one model and dataset share their forward passes.

Teacher-forced scores are cached under one key per token sequence (`score`), so a method that
scores what another already scored computes nothing. A method that `scores_for_others` (greedy
extraction: its own pass over a prompt can go on over the true suffix) can also score, in that
pass, the sequences the others will read: then it runs before them, and they replay its scores.
Without the plan the work done would depend on the order of the suite.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable

from memeval import hookimpl
from memeval.collect import Item
from memeval.runner import Session


@hookimpl
def memeval_collection_modifyitems(session: Session, items: list[Item]) -> None:
    """Tell each producer what the other evaluations of its model and dataset score, and run it
    before the first of them; every other item keeps its place."""
    groups: dict[tuple[str | None, str | None], list[Item]] = defaultdict(list)
    for item in items:
        if item.spec.model and item.spec.dataset:
            groups[(item.spec.model, item.spec.dataset)].append(item)
    for group in groups.values():
        for producer in group:
            wanted = scored_by_others(producer, group)
            if wanted:
                producer.scored_by_others = wanted
                move_before_readers(producer, group, items, session)


def scored_by_others(producer: Item, group: list[Item]) -> frozenset[Hashable]:
    """What the others of the group read that the producer's pass can score."""
    can = producer.method_cls.scores_for_others(producer.params)
    return frozenset(reads(item) for item in group if item is not producer) & can if can else frozenset()


def reads(item: Item) -> Hashable | None:
    return item.method_cls.scored_sequences(item.params)


def move_before_readers(producer: Item, group: list[Item], items: list[Item], session: Session) -> None:
    readers = [item for item in group if item is not producer and reads(item) in producer.scored_by_others]
    first = min(items.index(item) for item in readers)
    if items.index(producer) > first:
        items.remove(producer)
        items.insert(first, producer)
        session.log(f"evaluation {producer.id!r} runs before {items[first + 1].id!r}: its forward pass scores "
                    f"what {', '.join(repr(r.id) for r in readers)} read")
