"""`extraction.*`: what training text a model regurgitates, verbatim or with high probability.

- `extraction.discoverable`: prompt with a training prefix, compare the greedy continuation with
  the true suffix (Carlini et al. 2022; memorization score of Biderman et al. 2023).
- `extraction.probabilistic`: the probability that a deployed sampler emits the exact suffix
  ((n, p)-discoverable extraction, Hayes et al. 2024).
- `extraction.exposure`: canary exposure (Carlini et al. 2019, "The Secret Sharer").
- `extraction.untargeted`: sample freely, rank, de-duplicate, check against the training corpus
  (Carlini et al. 2021).
- `extraction.forecast`: how well one model's memorized set predicts another's (Biderman et al.
  2023).

One module per method; `units` holds the prefix/suffix split the prefix-prompted methods share
(`approximate.*` too) and `sections` the report sections.
"""

from __future__ import annotations

from memeval.api import Registry, hookimpl
from memeval_plugins.extraction.discoverable import Discoverable
from memeval_plugins.extraction.exposure import Exposure
from memeval_plugins.extraction.forecast import Forecast
from memeval_plugins.extraction.probabilistic import Probabilistic
from memeval_plugins.extraction.untargeted import Untargeted


@hookimpl
def memeval_register(registry: Registry) -> None:
    for method in (Discoverable, Probabilistic, Exposure, Forecast, Untargeted):
        registry.add_method(method)
