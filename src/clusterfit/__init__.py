"""ClusterFit."""
