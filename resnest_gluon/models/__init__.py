"""ResNeSt models as hybridizable Gluon blocks.

Owns everything about the networks: split attention (:mod:`.splat`), DropBlock
(:mod:`.dropblock`), the network (:mod:`.resnest`), the zoo of named specs (:mod:`.zoo`),
weight loading (:mod:`.convert`) and cost counting (:mod:`.flops`). Imports only MXNet and
NumPy, never ``data``, ``training`` or ``config``.
"""
from .dropblock import DropBlock, get_dropblock_prob, set_dropblock_prob
from .flops import count_flops, count_params, stage_shapes
from .resnest import Bottleneck, ResNeSt
from .splat import SplitAttentionConv
from .zoo import MODEL_SPECS, ModelSpec, eval_crop_ratio, get_model, get_spec, list_models

__all__ = ["DropBlock", "get_dropblock_prob", "set_dropblock_prob", "count_flops",
           "count_params", "stage_shapes", "Bottleneck", "ResNeSt", "SplitAttentionConv",
           "MODEL_SPECS", "ModelSpec", "eval_crop_ratio", "get_model", "get_spec", "list_models"]
