"""`approximate.*`: memorization that verbatim checks miss (Ippolito et al. 2022).

A model that emits a training suffix with a few tokens changed passes an exact-match test. These
methods prompt with a training prefix, generate a continuation (greedy, or n samples) and score it
against the true suffix with sentence BLEU and chrF (`sacrebleu`), BERTScore (`bert-score`, with a
local encoder) and the normalized token edit distance.

- `approximate.similarity`: how often, and how closely, a model reproduces training suffixes.
- `approximate.compare`: a base model against a mitigated one on the same prefixes (e.g. one
  fine-tuned to avoid its memorized suffixes, Kassem et al. 2023): the reduction per criterion,
  and the fluency cost as the perplexity of each model's generations under a scoring model.

One module per method; `params` holds what a suite sets and the criteria, `scoring` the scores,
`generation` the prompting and verdicts both methods share, `sections` the report sections.
"""

from __future__ import annotations

from memeval.api import Registry, hookimpl
from memeval_plugins.approximate.compare import Compare
from memeval_plugins.approximate.similarity import Similarity


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_method(Similarity)
    registry.add_method(Compare)
