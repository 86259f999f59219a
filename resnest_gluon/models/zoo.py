"""Model zoo: the one table of ResNeSt depths and variants, and :func:`get_model`.

This module owns the architecture specs (:data:`MODEL_SPECS`), the per-model input settings
that sit beside them (input sizes, crop ratio, interpolation, normalisation), and building a
network by name, optionally loading weights (:func:`get_model`). The published numbers in the
spec table are those of docs/reference.md.
"""
import dataclasses
import difflib
from typing import Dict, Optional, Tuple

from ..errors import UserError
from .convert import load_weights
from .resnest import ResNeSt

__all__ = ["UnknownModelError", "ModelSpec", "MODEL_SPECS", "get_model", "get_spec",
           "list_models", "eval_crop_ratio", "IMAGENET_MEAN_RGB", "IMAGENET_STD_RGB"]

# The normalisation every published ResNeSt was trained with (0-255 RGB scale).
IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def eval_crop_ratio(size: int) -> float:
    """Centre-crop ratio for evaluation at ``size``: 0.875 below 320, ``size/(size+32)`` above.

    The authors' large-crop evaluation (ResNeSt-200 at 320, -269 at 416) resizes the shorter
    side to ``size + 32`` before the centre crop.
    """
    return size / (size + 32.0) if size >= 320 else 0.875


class UnknownModelError(UserError, ValueError):
    """A model name that is not in the zoo (the message lists the valid ones)."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Architecture and default image settings of one model of the zoo.

    The architecture fields are passed to :class:`~resnest_gluon.models.resnest.ResNeSt`; the
    rest are defaults for training and evaluation transforms.
    """

    layers: Tuple[int, int, int, int]
    radix: int = 2
    cardinality: int = 1
    bottleneck_width: int = 64
    stem_width: int = 32
    deep_stem: bool = True
    avg_down: bool = True
    avd: bool = True
    avd_first: bool = False
    dropblock_prob: float = 0.1     # the recipe's final DropBlock probability (stages 3-4)
    final_drop: float = 0.0
    train_size: int = 224
    eval_size: int = 224
    interpolation: str = "bicubic"
    mean: Tuple[float, float, float] = IMAGENET_MEAN_RGB
    std: Tuple[float, float, float] = IMAGENET_STD_RGB
    published_params_m: Optional[float] = None   # docs/reference.md
    published_gflops: Optional[float] = None
    published_top1: Optional[float] = None

    @property
    def eval_crop_ratio(self) -> float:
        """Centre-crop ratio at :attr:`eval_size` (see :func:`eval_crop_ratio`)."""
        return eval_crop_ratio(self.eval_size)

    @property
    def architecture(self) -> Dict:
        """Keyword arguments of :class:`ResNeSt` that this spec fixes."""
        names = ("layers", "radix", "cardinality", "bottleneck_width", "stem_width",
                 "deep_stem", "avg_down", "avd", "avd_first", "final_drop")
        return {name: getattr(self, name) for name in names}

    @property
    def tag(self) -> str:
        """The paper's ``RsKxWd`` notation, e.g. ``2s1x64d``."""
        return f"{self.radix}s{self.cardinality}x{self.bottleneck_width}d"


def _fast(radix, cardinality, width, params, gflops, top1):
    # The ablation grid: ResNeSt-50 with avd before the 3x3 conv ("fast").
    return ModelSpec((3, 4, 6, 3), radix, cardinality, width, avd_first=True,
                     published_params_m=params, published_gflops=gflops, published_top1=top1)


MODEL_SPECS: Dict[str, ModelSpec] = {
    "resnest14": ModelSpec((1, 1, 1, 1), dropblock_prob=0.0, published_params_m=10.6,
                           published_top1=75.75),
    "resnest26": ModelSpec((2, 2, 2, 2), published_params_m=17.1, published_top1=78.68),
    "resnest50": ModelSpec((3, 4, 6, 3), published_params_m=27.5, published_gflops=5.39,
                           published_top1=81.04),
    "resnest101": ModelSpec((3, 4, 23, 3), stem_width=64, eval_size=256,
                            published_params_m=48.3, published_top1=82.81),
    "resnest200": ModelSpec((3, 24, 36, 3), stem_width=64, final_drop=0.2, train_size=256,
                            eval_size=320, published_params_m=70.4, published_top1=83.88),
    "resnest269": ModelSpec((3, 30, 48, 8), stem_width=64, final_drop=0.2, train_size=320,
                            eval_size=416, published_params_m=111.2, published_top1=84.53),
    "resnet50d": _fast(0, 1, 64, 25.6, 4.34, 79.41),
    "resnest50_fast_1s1x64d": _fast(1, 1, 64, 26.3, 4.34, 80.35),
    "resnest50_fast_2s1x64d": _fast(2, 1, 64, 27.5, 4.34, 80.65),
    "resnest50_fast_4s1x64d": _fast(4, 1, 64, 31.9, 4.35, 80.90),
    "resnest50_fast_1s2x40d": _fast(1, 2, 40, 25.9, 4.38, 80.72),
    "resnest50_fast_2s2x40d": _fast(2, 2, 40, 26.9, 4.38, 80.84),
    "resnest50_fast_4s2x40d": _fast(4, 2, 40, 30.4, 4.41, 81.17),
    "resnest50_fast_1s4x24d": _fast(1, 4, 24, 25.7, 4.42, 80.97),
}


def list_models():
    """Return the names :func:`get_model` accepts, in table order."""
    return list(MODEL_SPECS)


def get_spec(name: str) -> ModelSpec:
    """Return the :class:`ModelSpec` of ``name``; ``ValueError`` listing valid names if unknown."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), MODEL_SPECS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}.{hint} Valid names: "
                         f"{', '.join(MODEL_SPECS)}") from None


_ARCH_OVERRIDES = {"layers", "radix", "cardinality", "bottleneck_width", "stem_width",
                   "deep_stem", "avg_down", "avd", "avd_first", "final_drop", "output_stride",
                   "last_gamma", "attention_dropout", "in_channels", "norm_kwargs", "prefix",
                   "params", "attention_product", "grouped_conv", "features_only",
                   "out_indices"}


def get_model(name: str, classes: int = 1000, pretrained: Optional[str] = None,
              dropblock_prob: Optional[float] = None, ctx=None, **overrides) -> ResNeSt:
    """Build a zoo model by name, optionally loading weights.

    Parameters
    ----------
    name : str
        One of :func:`list_models`.
    classes : int
        Output classes.
    pretrained : str, optional
        A weights file: Gluon ``.params`` (ours, the published Gluon weights, full or
        ``arg:``/``aux:`` prefixed names), a PyTorch state dict of the authors' or timm's
        (``.pth``/``.pt``/``.bin``, read without torch) or ``.safetensors``; see
        :func:`resnest_gluon.models.convert.load_weights`. A backbone (``features_only``)
        ignores the file's classifier. Without it the network is returned uninitialised
        (call ``initialize()``).
    dropblock_prob : float, optional
        Initial DropBlock probability on stages 3-4; default 0 (the training loop schedules it
        towards ``spec.dropblock_prob``).
    ctx : mxnet.Context, optional
        Where to load ``pretrained`` weights.
    **overrides
        Any architecture field (``radix``, ``cardinality``, ``bottleneck_width``,
        ``stem_width``, ``layers``, ``avd_first``, ``output_stride``, ``last_gamma``,
        ``final_drop``, ...) to build another point of the design space, and
        ``features_only=True`` with ``out_indices=(1, 2, 3, 4)`` for the backbone: a
        HybridBlock returning the stage feature maps (see :class:`ResNeSt`).

    Returns
    -------
    ResNeSt
        The network; ``net.spec`` holds the (overridden) spec.
    """
    spec = get_spec(name)
    unknown = set(overrides) - _ARCH_OVERRIDES
    if unknown:
        raise TypeError(f"get_model() got unknown option(s) {sorted(unknown)}; valid: "
                        f"{sorted(_ARCH_OVERRIDES)}")
    spec_fields = {f.name for f in dataclasses.fields(ModelSpec)}
    spec = dataclasses.replace(spec, **{k: v for k, v in overrides.items() if k in spec_fields})
    if "layers" in overrides:
        spec = dataclasses.replace(spec, layers=tuple(overrides["layers"]))
    kwargs = spec.architecture
    kwargs.update({k: v for k, v in overrides.items() if k not in spec_fields})
    kwargs.setdefault("prefix", f"{name}_")
    net = ResNeSt(classes=classes, dropblock_prob=dropblock_prob or 0.0, **kwargs)
    net.spec = spec
    net.name_in_zoo = name
    if pretrained:
        load_weights(net, pretrained, ctx=ctx)
    return net

