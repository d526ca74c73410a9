"""ClusterFit (Yan et al., CVPR 2020): cluster a pre-trained network's features, train a new
network from scratch on the cluster ids, and compare both by linear probes of frozen features.

The public API, listed here; everything else is reachable through the sub-packages.
"""

from clusterfit.cluster import KMeans, per_label_kmeans, prototype_clusters
from clusterfit.config import RunConfig, load_config
from clusterfit.data import ImageSet, load_images
from clusterfit.errors import ClusterFitError, ConfigError, DataError
from clusterfit.evaluate import knn_accuracy, linear_probe, lowshot_eval, svm_map
from clusterfit.models import Net, create_model, from_module, list_models, load_model
from clusterfit.pretext import get_objective, list_objectives
from clusterfit.stages import run_pipeline
from clusterfit.train import Trainer, distillation_loss

__version__ = "0.1.0"

__all__ = [
    "ClusterFitError",
    "ConfigError",
    "DataError",
    "ImageSet",
    "KMeans",
    "Net",
    "RunConfig",
    "Trainer",
    "__version__",
    "create_model",
    "distillation_loss",
    "from_module",
    "get_objective",
    "knn_accuracy",
    "linear_probe",
    "list_models",
    "list_objectives",
    "load_config",
    "load_images",
    "load_model",
    "lowshot_eval",
    "per_label_kmeans",
    "prototype_clusters",
    "run_pipeline",
    "svm_map",
]
