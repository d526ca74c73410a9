"""Networks: one backbone contract (:class:`Net`), a registry of architectures, checkpoints."""

from clusterfit.models.backbone import LAYER_RULE, Backbone, LayerTrunk
from clusterfit.models.checkpoint import load_checkpoint, load_model, save_checkpoint, unwrap
from clusterfit.models.net import (
    CANONICAL_LAYERS,
    POOL,
    Net,
    count_parameters,
    global_pool,
    recalibrate_batchnorm,
)
from clusterfit.models.registry import (
    build_from_args,
    create_for_data,
    create_model,
    from_module,
    list_models,
    register_model,
)
from clusterfit.models.resnet_cifar import ResNetCifar
from clusterfit.models.video import r2plus1d_trunk  # registers r2plus1d_narrow

__all__ = [
    "CANONICAL_LAYERS",
    "LAYER_RULE",
    "POOL",
    "Backbone",
    "LayerTrunk",
    "Net",
    "ResNetCifar",
    "build_from_args",
    "count_parameters",
    "create_for_data",
    "create_model",
    "from_module",
    "global_pool",
    "list_models",
    "load_checkpoint",
    "load_model",
    "r2plus1d_trunk",
    "recalibrate_batchnorm",
    "register_model",
    "save_checkpoint",
    "unwrap",
]
