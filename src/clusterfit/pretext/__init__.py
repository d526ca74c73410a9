"""N_pre training objectives (ClusterFit §3.2, §4): supervised with label noise, weak labels,
RotNet and Jigsaw, each an :class:`Objective` looked up by name with :func:`get_objective`."""

from clusterfit.pretext.base import (
    Objective,
    get_objective,
    get_objective_class,
    list_objectives,
    register_objective,
)
from clusterfit.pretext.jigsaw import (
    DEFAULT_MIN_HAMMING,
    JigsawObjective,
    jigsaw_geometry,
    load_permutations,
    make_permutations,
    min_hamming_distance,
)
from clusterfit.pretext.rotnet import RotNetObjective
from clusterfit.pretext.supervised import SupervisedObjective, inject_label_noise
from clusterfit.pretext.weak import WeakLabelObjective, load_weak_labels, sample_weak_labels

__all__ = [
    "DEFAULT_MIN_HAMMING",
    "JigsawObjective",
    "Objective",
    "RotNetObjective",
    "SupervisedObjective",
    "WeakLabelObjective",
    "get_objective",
    "get_objective_class",
    "inject_label_noise",
    "jigsaw_geometry",
    "list_objectives",
    "load_permutations",
    "load_weak_labels",
    "make_permutations",
    "min_hamming_distance",
    "register_objective",
    "sample_weak_labels",
]
