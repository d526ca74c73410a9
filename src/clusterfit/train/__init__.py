"""The training engine (one loop for N_pre, N_cf and the baselines) and the distillation loss."""

from clusterfit.train.distill import check_distillable, distillation_loss
from clusterfit.train.engine import Trainer, learning_rate, summed_cross_entropy, train_network

__all__ = [
    "Trainer",
    "check_distillable",
    "distillation_loss",
    "learning_rate",
    "summed_cross_entropy",
    "train_network",
]
