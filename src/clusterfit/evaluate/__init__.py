"""Transfer evaluation of frozen features (ClusterFit, Yan et al. CVPR 2020, Sec. 4 and App. D).

Functions over N x D feature arrays and their labels: the linear probe, VOC07-style SVMs (mAP),
weighted kNN, low-shot SVMs, and the per-layer pooling to about 9k dimensions.
"""

from clusterfit.evaluate.features import pool_to_dims, pooled_size
from clusterfit.evaluate.knn import knn_accuracy, knn_classify, knn_scores
from clusterfit.evaluate.linear import linear_probe, linear_probes, stratified_split
from clusterfit.evaluate.lowshot import lowshot_eval, sample_shots
from clusterfit.evaluate.svm import average_precision, mean_average_precision, svm_map

__all__ = [
    "average_precision",
    "knn_accuracy",
    "knn_classify",
    "knn_scores",
    "linear_probe",
    "linear_probes",
    "lowshot_eval",
    "mean_average_precision",
    "pool_to_dims",
    "pooled_size",
    "sample_shots",
    "stratified_split",
    "svm_map",
]
