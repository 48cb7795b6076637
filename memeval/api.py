"""The public surface for plugin authors: everything a method, reporter or adapter plugin imports.

A plugin imports from here and nowhere else in memeval (the built-in plugins in `memeval_plugins`
do exactly that, and a test keeps it so). Names not listed here are internal and may change.

    from memeval.api import Method, MetricSpec, Params, hookimpl, mean_metric

    class Shortest(Method):
        name = "demo.shortest"
        metrics = (MetricSpec("short_rate", "share of samples under 20 characters", None),)
        ...

    @hookimpl
    def memeval_register(registry):
        registry.add_method(Shortest)
"""

from __future__ import annotations

from memeval import __version__, hookimpl
from memeval.blocks import (
    TOP_N,
    Block,
    Cell,
    ComparedSample,
    Comparison,
    HeatMap,
    Histogram,
    Image,
    ImageGrid,
    LinePlot,
    Section,
    Sensitive,
    Series,
    Table,
    Text,
    histogram_counts,
    histogram_of,
)
from memeval.cache import OutputCache, output_key
from memeval.corpus import CorpusIndex, corpus_fingerprint
from memeval.errors import RegistryError, UsageError
from memeval.method import SCORED_SAMPLES, Context, Method, MetricSpec, Params
from memeval.models.base import CausalLM, ModelAdapter, TokenScores, fit_to_context
from memeval.registry import Registry
from memeval.results import EvaluationResult, Metric, Records, RunDir
from memeval.sample import Sample
from memeval.stats import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    best_balanced_accuracy,
    bootstrap_ci,
    by_rows,
    clopper_pearson,
    cross_validated_scores,
    mean_metric,
    paired_bootstrap_ci,
    rate_metric,
    roc_auc,
    roc_curve,
    roc_metric,
    stratified_bootstrap_ci,
    stratified_folds,
    tpr_at_fpr,
    tpr_at_fpr_statistic,
)
from memeval.suite import Strict
from memeval.threads import TorchThreads
from memeval.train.architectures import (
    ArchitectureParams,
    CNNArchitecture,
    FactoryArchitecture,
    MLPArchitecture,
)
from memeval.train.architectures import build_model as build_architecture
from memeval.train.metrics import Curves, LabelSet
from memeval.train.metrics import curves as training_curves
from memeval.train.metrics import final_counts as training_final_counts
from memeval.train.metrics import records as training_records
from memeval.train.trainers import (
    OptimizerParams,
    TrainData,
    Trainer,
    TrainingLog,
    TrainingRun,
    TrainJob,
    TrainResult,
)
from memeval.train.trainers import predict as predict_logits

__all__ = [
    "DEFAULT_LEVEL", "DEFAULT_RESAMPLES", "TOP_N", "Block", "CausalLM", "Cell", "ComparedSample", "Comparison",
    "Context", "CorpusIndex", "EvaluationResult", "Histogram", "Image", "ImageGrid", "LinePlot", "Method", "Metric", "MetricSpec",
    "ModelAdapter", "OutputCache", "Params", "Records", "Registry", "RegistryError", "RunDir", "Sample",
    "Section", "Sensitive", "Series", "Strict", "Table", "Text", "TokenScores", "TorchThreads", "UsageError",
    "__version__", "best_balanced_accuracy", "bootstrap_ci", "by_rows", "clopper_pearson", "corpus_fingerprint",
    "cross_validated_scores", "fit_to_context", "histogram_counts", "histogram_of", "hookimpl", "mean_metric",
    "output_key", "paired_bootstrap_ci", "rate_metric", "roc_auc", "roc_curve", "roc_metric",
    "stratified_bootstrap_ci", "tpr_at_fpr", "tpr_at_fpr_statistic",
    # training experiments (classifier models): the log, the labels, and what they measure
    "Curves", "LabelSet", "Trainer", "TrainingLog", "training_curves", "training_final_counts", "training_records",
    # a grid of numbers coloured by value (e.g. the arithmetic ERD map)
    "HeatMap",
    # writing a trainer (e.g. the mbi plugin's RAM trainer)
    "OptimizerParams", "TrainData", "TrainJob", "TrainResult", "TrainingRun", "predict_logits",
    # torch module factories: the built-in MLP and CNN, or any `package.module:callable`
    "ArchitectureParams", "CNNArchitecture", "FactoryArchitecture", "MLPArchitecture", "build_architecture",
    "stratified_folds",
    # the sharing plan: what a method's teacher-forced scores are (`Method.scored_sequences`)
    "SCORED_SAMPLES",
]
