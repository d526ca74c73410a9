"""Clustering of N_pre's features (ClusterFit §3; per-label k-means §5.2; prototypes App. A)."""

from clusterfit.cluster.kmeans import PCA, KMeans, faiss_available, faiss_kmeans

__all__ = ["PCA", "KMeans", "faiss_available", "faiss_kmeans"]
