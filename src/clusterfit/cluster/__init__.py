"""Clustering of N_pre's features (ClusterFit §3; per-label k-means §5.2; prototypes App. A)."""

from clusterfit.cluster.assign import nearest_centroid
from clusterfit.cluster.kmeans import PCA, KMeans, faiss_available, faiss_kmeans
from clusterfit.cluster.metrics import cluster_stats, imbalance_factor, purity
from clusterfit.cluster.per_label import PerLabelKMeans, allocate_clusters, per_label_kmeans
from clusterfit.cluster.prototype import PrototypeClustering, prototype_clusters

__all__ = [
    "PCA",
    "KMeans",
    "PerLabelKMeans",
    "PrototypeClustering",
    "allocate_clusters",
    "cluster_stats",
    "faiss_available",
    "faiss_kmeans",
    "imbalance_factor",
    "nearest_centroid",
    "per_label_kmeans",
    "prototype_clusters",
    "purity",
]
