"""ResNeSt models as hybridizable Gluon blocks.

Owns everything about the networks: split attention (:mod:`.splat`), DropBlock
(:mod:`.dropblock`), the network (:mod:`.resnest`), the zoo of named specs (:mod:`.zoo`),
weight loading (:mod:`.convert`), cost counting (:mod:`.flops`) and the input settings a
network expects (:mod:`.preprocess`). Imports only MXNet and NumPy, never ``data``,
``training`` or ``config``.
"""
from .dropblock import DropBlock, get_dropblock_prob, set_dropblock_prob
from .flops import count_flops, count_params, stage_shapes
from .preprocess import EvalSettings, resolve_eval_settings
from .resnest import Bottleneck, ResNeSt
from .splat import SplitAttentionConv
from .zoo import (
                  IMAGENET_MEAN_RGB,
                  IMAGENET_STD_RGB,
                  MODEL_SPECS,
                  ModelSpec,
                  eval_crop_ratio,
                  get_model,
                  get_spec,
                  list_models,
)

__all__ = ["DropBlock", "get_dropblock_prob", "set_dropblock_prob", "count_flops",
           "count_params", "stage_shapes", "Bottleneck", "ResNeSt", "SplitAttentionConv",
           "MODEL_SPECS", "ModelSpec", "eval_crop_ratio", "get_model", "get_spec", "list_models",
           "EvalSettings", "resolve_eval_settings", "IMAGENET_MEAN_RGB", "IMAGENET_STD_RGB"]
