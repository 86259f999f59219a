"""resnest_gluon: train, evaluate and export ResNeSt (Split-Attention Networks) in MXNet Gluon.

Layout (data flows one way: shards -> data -> training <- models):
``models`` (networks, zoo, weights, cost), ``data`` (RecordIO, transforms), ``training``
(distributed loop; only ``training/dist.py`` imports horovod), ``config`` and ``export``.
"""
from .models import get_model, list_models

__version__ = "0.1.0"
__all__ = ["get_model", "list_models", "__version__"]
