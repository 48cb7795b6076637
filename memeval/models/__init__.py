"""Model adapters: they give capabilities (generate, logprobs, ...), not model classes.

This module is also the builtin plugin that registers the adapters memeval ships.
"""

from memeval import hookimpl
from memeval.models.base import AdapterContext, CachedCausalLM, CausalLM, ModelAdapter, TokenScores
from memeval.models.classifier import Classifier
from memeval.models.hf_causal import HFCausal
from memeval.models.hf_masked import HFMasked, MaskedLM
from memeval.models.masked_recipe import MaskedRecipe
from memeval.models.openai_compat import OpenAICompat
from memeval.models.recipe import Recipe
from memeval.models.seq2seq import Seq2Seq
from memeval.registry import Registry
from memeval.train.trainers import BUILTIN_TRAINERS

__all__ = ["AdapterContext", "CachedCausalLM", "CausalLM", "Classifier", "HFCausal", "ModelAdapter", "Recipe",
           "Seq2Seq", "TokenScores", "HFMasked", "MaskedLM", "MaskedRecipe"]


@hookimpl
def memeval_register(registry: Registry) -> None:
    registry.add_adapter(HFCausal)
    registry.add_adapter(Recipe)
    registry.add_adapter(Classifier)
    registry.add_adapter(Seq2Seq)
    registry.add_adapter(HFMasked)
    registry.add_adapter(MaskedRecipe)
    registry.add_adapter(OpenAICompat)
    for name, trainer in BUILTIN_TRAINERS.items():
        registry.add_trainer(name, trainer)
