"""What training experiments share: data sources, label noise, architectures, trainers, the
classifier recipe (train once, cache by hash) and the label-noise measurements.

Layer: with models and data; imports only memeval.errors (and torch, numpy, pydantic).
"""

from memeval.train.classifier import (
    Built,
    ClassifierParams,
    NoiseParams,
    TrainedClassifier,
    build_classifier,
    run_training,
)
from memeval.train.metrics import Curves, LabelSet, curves, final_metrics, records
from memeval.train.noise import NoisyLabels, apply_noise, asymmetric_noise, symmetric_noise
from memeval.train.sources import ClassificationData, load_source
from memeval.train.trainers import (
    BUILTIN_TRAINERS,
    BatchState,
    EpochState,
    OptimizerParams,
    TrainData,
    Trainer,
    TrainerCallback,
    TrainingLog,
    TrainJob,
    TrainResult,
)

__all__ = [
    "BUILTIN_TRAINERS", "BatchState", "Built", "ClassificationData", "ClassifierParams", "Curves", "EpochState",
    "LabelSet", "NoiseParams", "NoisyLabels", "OptimizerParams", "TrainData", "TrainJob", "TrainResult",
    "TrainedClassifier", "Trainer", "TrainerCallback", "TrainingLog", "apply_noise", "asymmetric_noise",
    "build_classifier", "curves", "final_metrics", "load_source", "records", "run_training", "symmetric_noise",
]
