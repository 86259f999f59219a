"""ResNeSt network: bottleneck block, stem, stages and classifier.

This module owns the network structure (:class:`Bottleneck`, :class:`ResNeSt`) and the
validation of an architecture point (:func:`check_architecture`). Which depths and variants
exist is data, in :mod:`resnest_gluon.models.zoo`.

The structure (attribute names and order) follows the published Gluon ResNeSt weights, so their
``save_parameters`` files load directly: ``conv1`` (deep stem), ``bn1``, ``layer1``..``layer4``
of :class:`Bottleneck`, ``fc``. ResNet-D tricks used by ResNeSt: deep stem, average-pool
downsampling in the shortcut, and "avd" (a 3x3 average pool carrying the stride, before or after
the 3x3 convolution).
"""
from mxnet.gluon import nn

from .dropblock import DropBlock, SeededDropout
from .splat import (
    PORTABLE_CONV,
    BatchNormReLU,
    GroupedConv2D,
    SplitAttentionConv,
    attention_channels,
)

__all__ = ["Bottleneck", "ResNeSt", "check_architecture", "stage_geometry"]

EXPANSION = 4
STAGE_PLANES = (64, 128, 256, 512)


def group_width(planes: int, bottleneck_width: int, cardinality: int) -> int:
    """Channels of the 3x3 convolution in a bottleneck of ``planes`` (the authors' rule)."""
    return int(planes * (bottleneck_width / 64.0)) * cardinality


def stage_geometry(output_stride: int):
    """Return ``[(stride, dilation)]`` for the four stages at the given output stride.

    32 is the classification network; 16 and 8 replace the strides of stage 4 (and 3) by
    dilation 2 (and 4), the usual dense-prediction backbones.
    """
    table = {
        32: [(1, 1), (2, 1), (2, 1), (2, 1)],
        16: [(1, 1), (2, 1), (2, 1), (1, 2)],
        8: [(1, 1), (2, 1), (1, 2), (1, 4)],
    }
    if output_stride not in table:
        raise ValueError(f"output_stride must be one of 8, 16 or 32, got {output_stride}")
    return table[output_stride]


def check_architecture(layers, radix, cardinality, bottleneck_width, stem_width, classes,
                       output_stride=32, dropblock_prob=0.0, final_drop=0.0):
    """Raise ``ValueError`` naming the offending parameter if the point cannot be built.

    Checks what MXNet would otherwise report deep inside a convolution: every stage's group
    width must split evenly into ``radix * cardinality`` convolution groups and the attention
    width into ``cardinality`` groups.
    """
    if len(layers) != 4 or any(int(n) < 1 for n in layers):
        raise ValueError(f"layers must be four positive block counts, got {list(layers)}")
    for name, value, low in (("radix", radix, 0), ("cardinality", cardinality, 1),
                             ("bottleneck_width", bottleneck_width, 1),
                             ("stem_width", stem_width, 1), ("classes", classes, 1)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, p in (("dropblock_prob", dropblock_prob), ("final_drop", final_drop)):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {p}")
    stage_geometry(output_stride)
    for planes in STAGE_PLANES:
        width = group_width(planes, bottleneck_width, cardinality)
        if width < cardinality:
            raise ValueError(
                f"bottleneck_width={bottleneck_width} gives no channel per cardinal group "
                f"(cardinality={cardinality}) in the {planes}-plane stage")
        groups = cardinality * max(radix, 1)
        if width % groups:
            raise ValueError(
                f"the {planes}-plane stage has {width} channels in its 3x3 convolution "
                f"(bottleneck_width={bottleneck_width} x cardinality={cardinality}), not "
                f"divisible by radix x cardinality = {radix} x {cardinality} = {groups}")
        if radix >= 1 and attention_channels(width, radix) % cardinality:
            raise ValueError(
                f"attention width {attention_channels(width, radix)} of the {planes}-plane stage "
                f"is not divisible by cardinality={cardinality}")


class Bottleneck(nn.HybridBlock):
    """ResNeSt bottleneck: 1x1 reduce, 3x3 split attention (or plain conv), 1x1 expand.

    Parameters
    ----------
    planes : int
        Base width of the stage (64, 128, 256, 512); the block outputs ``4 * planes``.
    in_channels : int
        Input channels.
    strides : int
        Spatial stride of the block.
    dilation, previous_dilation : int
        Dilation of the 3x3 convolution, and of the stage (they differ in the first block of a
        dilated stage, which then also applies avd).
    radix, cardinality, bottleneck_width : int
        Split-attention point; ``radix == 0`` gives a plain ResNet-D bottleneck.
    avd, avd_first : bool
        Carry the stride by a 3x3 average pool, before (``avd_first``) or after the 3x3 conv.
    downsample : HybridBlock or None
        Projection of the shortcut.
    dropblock_prob : float or None
        ``None``: no DropBlock layers; a number: DropBlock (initial probability) after the
        first two convolutions and on the residual branch, as in the authors' code.
    last_gamma : bool
        Initialise the last BatchNorm's gamma to zero (each block starts as the identity).
    """

    def __init__(self, planes, in_channels, strides=1, dilation=1, previous_dilation=1,
                 radix=2, cardinality=1, bottleneck_width=64, avd=True, avd_first=False,
                 downsample=None, dropblock_prob=None, last_gamma=False,
                 attention_dropout=0.0, norm_kwargs=None, attention_product="batch_dot",
                 grouped_conv=PORTABLE_CONV, **kwargs):
        super().__init__(**kwargs)
        norm_kwargs = norm_kwargs or {}
        width = group_width(planes, bottleneck_width, cardinality)
        self.radix = radix
        self.avd = avd and (strides > 1 or previous_dilation != dilation)
        self.avd_first = avd_first
        conv2_strides = 1 if self.avd else strides
        # No name_scope: children are named in the enclosing scope, like the published
        # blocks, so prefixed weight files (resnest_layers1_conv1_weight, ...) match.
        self.conv1 = nn.Conv2D(width, 1, use_bias=False, in_channels=in_channels)
        self.bn1 = nn.BatchNorm(in_channels=width, **norm_kwargs)
        if radix >= 1:
            self.conv2 = SplitAttentionConv(
                width, 3, conv2_strides, dilation, dilation, cardinality=cardinality,
                radix=radix, in_channels=width, attention_dropout=attention_dropout,
                norm_kwargs=norm_kwargs, attention_product=attention_product,
                grouped_conv=grouped_conv)
            self.bn2 = None
        else:
            self.conv2 = GroupedConv2D(width, 3, conv2_strides, dilation, dilation,
                                       groups=cardinality, use_bias=False, in_channels=width,
                                       grouped_conv=grouped_conv)
            self.bn2 = nn.BatchNorm(in_channels=width, **norm_kwargs)
        self.conv3 = nn.Conv2D(planes * EXPANSION, 1, use_bias=False, in_channels=width)
        gamma_init = "zeros" if last_gamma else "ones"
        self.bn3 = nn.BatchNorm(in_channels=planes * EXPANSION,
                                gamma_initializer=gamma_init, **norm_kwargs)
        self.avd_layer = nn.AvgPool2D(3, strides, padding=1) if self.avd else None
        self.downsample = downsample
        if dropblock_prob is None:
            self.dropblock1 = self.dropblock2 = self.dropblock3 = None
        else:
            self.dropblock1 = DropBlock(dropblock_prob)
            self.dropblock2 = DropBlock(dropblock_prob)
            self.dropblock3 = DropBlock(dropblock_prob)

    def hybrid_forward(self, F, x):
        out = self.bn1(self.conv1(x))
        if self.dropblock1 is not None:
            out = self.dropblock1(out)
        out = F.Activation(out, act_type="relu")
        if self.avd and self.avd_first:
            out = self.avd_layer(out)
        out = self.conv2(out)
        if self.bn2 is not None:
            out = self.bn2(out)
        if self.dropblock2 is not None:
            out = self.dropblock2(out)
        if self.bn2 is not None:
            out = F.Activation(out, act_type="relu")
        if self.avd and not self.avd_first:
            out = self.avd_layer(out)
        out = self.bn3(self.conv3(out))
        if self.dropblock3 is not None:
            out = self.dropblock3(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.Activation(out + shortcut, act_type="relu")


def _check_out_indices(out_indices):
    indices = tuple(int(k) for k in out_indices)
    if not indices or any(k not in (1, 2, 3, 4) for k in indices) or len(set(indices)) < len(
            indices):
        raise ValueError(f"out_indices must be distinct stages from 1 to 4, got "
                         f"{list(out_indices)}")
    return indices


def _stage_stride(geometry, stage):
    stride = 4   # the stem: a strided convolution and a strided max pool
    for strides, _ in geometry[:stage]:
        stride *= strides
    return stride


def _use_running_statistics(block):
    if isinstance(block, nn.BatchNorm):
        block._kwargs["use_global_stats"] = True   # pylint: disable=protected-access


class ResNeSt(nn.HybridBlock):
    """ResNeSt (and ResNet-D when ``radix == 0``) image classifier, or its backbone.

    With ``features_only`` the network has no classifier and returns the feature maps of the
    stages in ``out_indices`` (a tuple, in that order): stage ``k`` has stride ``2 ** (k + 1)``
    at output stride 32 (4, 8, 16, 32; dilated stages keep the stride of the stage before) and
    ``4 * (64, 128, 256, 512)[k - 1]`` channels, listed in :attr:`feature_strides` and
    :attr:`feature_channels`. Its parameter names are the classifier's without ``fc.``, so
    classification weights load into it.

    Parameters
    ----------
    layers : sequence of 4 int
        Bottleneck blocks per stage.
    radix, cardinality, bottleneck_width : int
        Split-attention point (``RsKxWd`` in the paper's notation).
    stem_width : int
        Width of the first two 3x3 stem convolutions (the third doubles it).
    deep_stem : bool
        Three 3x3 convolutions instead of one 7x7.
    avg_down : bool
        Average-pool downsampling in the shortcut projection (ResNet-D).
    avd, avd_first : bool
        See :class:`Bottleneck`.
    classes : int
        Output classes.
    output_stride : int
        32 for classification; 16 or 8 dilate stages 4 (and 3) instead of striding.
    dropblock_prob : float
        Initial DropBlock probability in stages 3 and 4; layers are always present there (a
        probability of 0 costs nothing), so a schedule can raise it during training.
    final_drop : float
        Dropout before the classifier.
    last_gamma : bool
        Zero-initialise the last BatchNorm gamma of every block.
    attention_dropout : float
        Dropout inside split attention.
    in_channels : int
        Image channels.
    norm_kwargs : dict, optional
        Extra BatchNorm arguments (e.g. ``use_global_stats``).
    attention_product : str
        How split attention weights and sums its splits (``radix_sum``, the compiled CPU
        operator, fastest in float32; ``batch_dot``, MXNet's fastest on CPUs; or
        ``broadcast_mul``, for GPUs); the same network and results either way.
    grouped_conv : str
        How grouped 3x3 convolutions run (``winograd``, the compiled CPU operator, fastest in
        float32; ``split-narrow``, MXNet's fastest on CPUs; or ``single``, for GPUs; see
        :class:`~resnest_gluon.models.splat.GroupedConv2D`); the same network, parameters and
        results either way.
    features_only : bool
        Build the backbone only (no pooling, dropout or classifier).
    out_indices : sequence of int
        With ``features_only``: the stages (1-4) whose outputs are returned.
    """

    def __init__(self, layers, radix=2, cardinality=1, bottleneck_width=64, stem_width=32,
                 deep_stem=True, avg_down=True, avd=True, avd_first=False, classes=1000,
                 output_stride=32, dropblock_prob=0.0, final_drop=0.0, last_gamma=False,
                 attention_dropout=0.0, in_channels=3, norm_kwargs=None,
                 attention_product="batch_dot", grouped_conv=PORTABLE_CONV, features_only=False,
                 out_indices=(1, 2, 3, 4), **kwargs):
        super().__init__(**kwargs)
        check_architecture(layers, radix, cardinality, bottleneck_width, stem_width, classes,
                           output_stride, dropblock_prob, final_drop)
        self.in_channels = in_channels
        self.classes = None if features_only else classes
        self.features_only = bool(features_only)
        self.out_indices = _check_out_indices(out_indices) if features_only else ()
        geometry = stage_geometry(output_stride)
        self.feature_strides = tuple(_stage_stride(geometry, k) for k in self.out_indices)
        self.feature_channels = tuple(STAGE_PLANES[k - 1] * EXPANSION for k in self.out_indices)
        norm_kwargs = dict(norm_kwargs or {})
        block_args = dict(radix=radix, cardinality=cardinality,
                          bottleneck_width=bottleneck_width, avd=avd, avd_first=avd_first,
                          last_gamma=last_gamma, attention_dropout=attention_dropout,
                          norm_kwargs=norm_kwargs, attention_product=attention_product,
                          grouped_conv=grouped_conv)
        stem_out = stem_width * 2 if deep_stem else 64
        with self.name_scope():
            if deep_stem:
                # Created in the root scope, not the Sequential's: the published prefixed
                # names (resnest_conv0_weight, ...) come from that.
                self.conv1 = nn.HybridSequential(prefix="conv1")
                self.conv1.add(
                    nn.Conv2D(stem_width, 3, 2, 1, use_bias=False, in_channels=in_channels),
                    nn.BatchNorm(in_channels=stem_width, **norm_kwargs),
                    nn.Activation("relu"),
                    nn.Conv2D(stem_width, 3, 1, 1, use_bias=False, in_channels=stem_width),
                    nn.BatchNorm(in_channels=stem_width, **norm_kwargs),
                    nn.Activation("relu"),
                    nn.Conv2D(stem_out, 3, 1, 1, use_bias=False, in_channels=stem_width))
            else:
                self.conv1 = nn.Conv2D(64, 7, 2, 3, use_bias=False, in_channels=in_channels)
            self.bn1 = nn.BatchNorm(in_channels=stem_out, **norm_kwargs)
            self.maxpool = nn.MaxPool2D(pool_size=3, strides=2, padding=1)
            channels = stem_out
            for index, (planes, blocks, (strides, dilation)) in enumerate(
                    zip(STAGE_PLANES, layers, stage_geometry(output_stride)), start=1):
                # DropBlock lives in stages 3 and 4 only, as in the paper.
                stage_drop = dropblock_prob if index >= 3 else None
                stage = self._make_stage(index, planes, int(blocks), channels, strides,
                                         dilation, avg_down, stage_drop, block_args)
                setattr(self, f"layer{index}", stage)
                channels = planes * EXPANSION
            if features_only:
                self.drop = self.fc = None
            else:
                self.drop = SeededDropout(final_drop) if final_drop > 0 else None
                self.fc = nn.Dense(classes, in_units=channels)

    @staticmethod
    def _make_stage(index, planes, blocks, in_channels, strides, dilation, avg_down,
                    dropblock_prob, block_args):
        out_channels = planes * EXPANSION
        # The first block of a dilated stage uses half the stage's dilation (1 for 2, 2 for 4).
        first_dilation = 1 if dilation in (1, 2) else dilation // 2
        downsample = None
        if strides != 1 or in_channels != out_channels:
            downsample = nn.HybridSequential(prefix=f"down{index}_")
            with downsample.name_scope():
                if avg_down:
                    # Index 0 is a pool even at stride 1 (identity), keeping the published
                    # parameter names (downsample.1 = conv, downsample.2 = bn).
                    downsample.add(nn.AvgPool2D(pool_size=strides, strides=strides,
                                                ceil_mode=True, count_include_pad=False))
                    downsample.add(nn.Conv2D(out_channels, 1, 1, use_bias=False,
                                             in_channels=in_channels))
                else:
                    downsample.add(nn.Conv2D(out_channels, 1, strides, use_bias=False,
                                             in_channels=in_channels))
                downsample.add(nn.BatchNorm(in_channels=out_channels,
                                            **block_args["norm_kwargs"]))
        stage = nn.HybridSequential(prefix=f"layers{index}_")
        with stage.name_scope():
            stage.add(Bottleneck(planes, in_channels, strides, first_dilation, dilation,
                                 downsample=downsample, dropblock_prob=dropblock_prob,
                                 **block_args))
            for _ in range(1, blocks):
                stage.add(Bottleneck(planes, out_channels, 1, dilation, dilation,
                                     dropblock_prob=dropblock_prob, **block_args))
        return stage

    def stages(self, F, x, last=4):
        """The outputs of stages 1 to ``last`` (stem first)."""
        x = self.maxpool(F.Activation(self.bn1(self.conv1(x)), act_type="relu"))
        outputs = []
        for index in range(1, last + 1):
            x = getattr(self, f"layer{index}")(x)
            outputs.append(x)
        return outputs

    def freeze(self, stages: int):
        """Freeze the stem and the first ``stages`` stages for fine-tuning (-1: nothing, 0:
        the stem only, 4: the whole backbone): their parameters get no gradient and their
        BatchNorms use their running statistics, also in training. Call before the first
        forward pass (the graph is built then)."""
        if not -1 <= stages <= 4:
            raise ValueError(f"stages to freeze must be from -1 to 4, got {stages}")
        if stages < 0:
            return
        parts = [self.conv1, self.bn1] + [getattr(self, f"layer{k}")
                                          for k in range(1, stages + 1)]
        for part in parts:
            for param in part.collect_params().values():
                param.grad_req = "null"
            part.apply(_use_running_statistics)

    def hybrid_forward(self, F, x):
        if self.features_only:
            outputs = self.stages(F, x, max(self.out_indices))
            return tuple(outputs[k - 1] for k in self.out_indices)
        x = F.Pooling(self.stages(F, x)[-1], kernel=(1, 1), global_pool=True, pool_type="avg")
        x = F.flatten(x)
        if self.drop is not None:
            x = self.drop(x)
        return self.fc(x)

    def forward(self, x, *args):
        # Check what we can on NDArray inputs before MXNet fails deep inside a convolution.
        shape = getattr(x, "shape", None)
        if isinstance(shape, tuple):
            if len(shape) != 4:
                raise ValueError(f"expected a 4-D NCHW batch, got an input of shape {shape}")
            if shape[1] != self.in_channels:
                raise ValueError(f"expected {self.in_channels} input channels (NCHW), got "
                                 f"{shape[1]} in an input of shape {shape}")
            if min(shape[2:]) < 32:
                raise ValueError(f"input height and width must be at least 32 (the network "
                                 f"downsamples 32x), got {shape[2:]}")
        if self._active and any(block.stale() for block in self._compiled_blocks()):
            self._clear_cached_op()     # grad_req changed since the graph was traced
        return super().forward(x, *args)

    def _compiled_blocks(self):
        """The network's blocks that can run compiled operators (grouped convolutions and
        BatchNorm+ReLU), found once (the forward pass asks each call). A frozenset: Gluon
        warns about Blocks held in an attribute's list or tuple."""
        found = self.__dict__.get("_compiled_block_set")
        if found is None:
            collected = []
            self.apply(lambda b: collected.append(b)
                       if isinstance(b, (GroupedConv2D, BatchNormReLU)) else None)
            found = self._compiled_block_set = frozenset(collected)
        return found
