"""Networks: one backbone contract (:class:`Net`), a registry of architectures, checkpoints."""

from clusterfit.models.checkpoint import load_checkpoint, load_model, save_checkpoint, unwrap
from clusterfit.models.net import CANONICAL_LAYERS, POOL, Net, count_parameters, global_pool
from clusterfit.models.registry import (
    Backbone,
    build_from_args,
    create_model,
    from_module,
    list_models,
    register_model,
)
from clusterfit.models.resnet_cifar import ResNetCifar

__all__ = [
    "CANONICAL_LAYERS",
    "POOL",
    "Backbone",
    "Net",
    "ResNetCifar",
    "build_from_args",
    "count_parameters",
    "create_model",
    "from_module",
    "global_pool",
    "list_models",
    "load_checkpoint",
    "load_model",
    "register_model",
    "save_checkpoint",
    "unwrap",
]
