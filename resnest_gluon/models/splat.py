"""Split-attention convolution (the "Split-Attention" block of ResNeSt, arXiv 2004.08955).

This module owns :class:`SplitAttentionConv`, the one place where split attention is computed,
so that it can be reimplemented for speed without touching the rest of the network.

Layout ("radix-major")
----------------------
The grouped 3x3 convolution uses ``cardinality * radix`` groups and writes its
``radix * channels`` outputs as ``radix`` consecutive splits of ``channels`` channels; inside a
split, the ``cardinality`` cardinal groups follow each other. The attention "fc" layers are 1x1
convolutions with ``cardinality`` groups, so the second one produces its logits
cardinality-major (``[k][r][c]``); they are transposed to radix-major before the softmax over
the splits. This is the same computation as the paper's cardinality-major description, with the
channels permuted (``tests/test_splat.py`` checks it against a naive NumPy version).

The weighted sum over the splits has three implementations with the same results
(:data:`ATTENTION_PRODUCTS`): the project's compiled CPU operator (:mod:`.extension`) and two
formulations in MXNet's own operators, one for CPUs and exported graphs and one for GPUs.
"""
import contextlib
import math
import os

from mxnet.gluon import nn

from . import extension
from .dropblock import SeededDropout, train_flag
from .precision import narrowest

__all__ = ["SplitAttentionConv", "attention_channels", "ATTENTION_PRODUCTS",
           "attention_product_for", "PORTABLE_PRODUCT", "GROUPED_CONVS", "grouped_conv_for",
           "GroupedConv2D", "BatchNormReLU", "implementations_for", "portable_products",
           "PORTABLE_CONV"]

# How the attention weights multiply the splits and the splits are summed: the same numbers,
# three kernels. radix_sum is the project's compiled CPU operator (models/extension.py): one
# sweep over x instead of a product, a split and a sum (docs/benchmarks.md); float32 only, and
# not in exported graphs, which must load anywhere. batch_dot is the fastest of MXNet's own
# operators on CPUs (oneDNN). broadcast_mul avoids cuBLAS batched GEMMs of ~10^5 tiny
# (1 x 1) @ (1 x HW) matrices on GPUs and keeps float16 activations float16 under AMP
# (batch_dot meets the float32 softmax as a widest-type op).
ATTENTION_PRODUCTS = ("batch_dot", "broadcast_mul", "radix_sum")
PORTABLE_PRODUCT = "batch_dot"


def _add_to() -> bool:
    """MXNet's opt-in add-to gradient accumulation is on: it would ask the compiled operators
    to add their gradients into the buffers; the extension API does not say so, and they
    write them."""
    return os.environ.get("MXNET_EXEC_ENABLE_ADDTO", "0") not in ("", "0")


def attention_product_for(device_type: str, dtype: str = "float32") -> str:
    """The default product for a device type: radix_sum on ``cpu`` in float32 where the
    compiled operator builds (else batch_dot; also under ``MXNET_EXEC_ENABLE_ADDTO``),
    broadcast_mul on ``gpu``. Graphs to export or convert trace batch_dot in its place
    (:func:`portable_products`)."""
    if device_type != "cpu":
        return "broadcast_mul"
    if dtype == "float32" and not _add_to() and extension.radix_sum_available():
        return "radix_sum"
    return PORTABLE_PRODUCT


# How a grouped convolution runs: the same parameters and results, three graphs. "single" is
# one Convolution with num_group (cuDNN's grouped kernels; GPUs). "split-narrow" runs each
# group as its own dense convolution where a group's input width is not a multiple of
# oneDNN's 16-channel block: oneDNN has no blocked kernel for such groups and falls back to
# im2col + GEMM (the 2x40d and 4x24d variants ran at a quarter of ResNet-D's FLOP rate); split,
# the dense convolutions get its fast kernels (docs/benchmarks.md). "winograd" runs 3x3
# convolutions (stride 1) with oneDNN's Winograd kernels through the project's compiled
# operator (models/extension.py; CPUs with AVX-512, float32), about twice as fast as MXNet's
# direct ones; other convolutions run as with "split-narrow".
GROUPED_CONVS = ("single", "split-narrow", "winograd")
ONEDNN_CHANNEL_BLOCK = 16
# The Winograd kernels pad each group's input and output channels to whole 16-channel blocks.
# Up to this factor of padded multiplications they still beat the direct or im2col kernels
# (measured per group shape of the zoo, batch 16, forward and backward: 20->80, 40->40 and
# 40->160 channels won by 1.25-1.6x at 1.6x, 1.44x and 1.2x; 24->24, 20->40 and 10->40 lost
# or tied at 1.78x and 1.92x; docs/benchmarks.md).
WINOGRAD_MAX_PADDING = 1.6
PORTABLE_CONV = "split-narrow"


def grouped_conv_for(device_type: str, dtype: str = "float32") -> str:
    """The default grouped convolution for a device type: single on ``gpu``; on ``cpu``,
    winograd in float32 where the compiled operator runs (not with MXNet's add-to gradient
    requests, which the extension API does not pass on), else split-narrow."""
    if device_type != "cpu":
        return "single"
    if (dtype == "float32" and not _add_to()
            and extension.winograd_conv_available()):
        return "winograd"
    return PORTABLE_CONV


def implementations_for(device_type: str, attention_product: str = "auto",
                        grouped_conv: str = "auto", dtype: str = "float32") -> dict:
    """The network arguments choosing how split attention and grouped convolutions run on a
    ``device_type`` device computing in ``dtype``; "auto" takes the device's default, anything
    else is kept (the compiled operator only where it can run)."""
    if attention_product == "auto":
        attention_product = attention_product_for(device_type, dtype)
    elif attention_product == "radix_sum" and (device_type != "cpu" or dtype != "float32"):
        raise ValueError(f"attention_product=radix_sum runs on CPUs in float32 only (here: "
                         f"{device_type}, {dtype}); use auto, batch_dot or broadcast_mul")
    if grouped_conv == "auto":
        grouped_conv = grouped_conv_for(device_type, dtype)
    elif grouped_conv == "winograd" and (device_type != "cpu" or dtype != "float32"):
        raise ValueError(f"grouped_conv=winograd runs on CPUs in float32 only (here: "
                         f"{device_type}, {dtype}); use auto, single or split-narrow")
    return {"attention_product": attention_product, "grouped_conv": grouped_conv}


@contextlib.contextmanager
def portable_products(net):
    """Within the block, ``net``'s split-attention blocks and grouped convolutions trace
    MXNet's own operators instead of the compiled ones (same parameters and results): for
    graphs that are exported or converted to another dtype. Restored afterwards."""
    products, convs, norms = [], [], []

    def collect(block):
        if isinstance(block, SplitAttentionConv) and block.attention_product == "radix_sum":
            products.append(block)
        if isinstance(block, GroupedConv2D) and block.winograd:
            convs.append(block)
        if isinstance(block, BatchNormReLU) and block.plain_kernel:
            norms.append(block)
    net.apply(collect)
    switches = ([(block, "attention_product", PORTABLE_PRODUCT, "radix_sum") for block in products]
                + [(block, "winograd", False, True) for block in convs]
                + [(block, "plain_kernel", False, True) for block in norms])
    for block, attribute, portable, _ in switches:
        setattr(block, attribute, portable)
    net._clear_cached_op()      # pylint: disable=protected-access; re-traced at the next call
    try:
        yield net
    finally:
        for block, attribute, _, compiled in switches:
            setattr(block, attribute, compiled)
        net._clear_cached_op()  # pylint: disable=protected-access


def _traced(block, F, param, value):
    """``param``'s ``value`` as a compiled operator reads it. The extension API does not pass
    MXNet's add requests, so where gradients accumulate (``grad_req='add'``) the operator's
    gradient lands in an intermediate array, through an identity whose own gradient adds;
    elsewhere (the identity's copy costs memory) the value itself. The ``grad_req`` is
    recorded on ``block`` for :func:`_stale`."""
    block.__dict__.setdefault("_traced_grad_reqs", {})[param.name] = param.grad_req
    return F.identity(value) if param.grad_req == "add" else value


def _stale(block) -> bool:
    """Whether a parameter that ``block`` passed through :func:`_traced` changed its
    ``grad_req`` to or from 'add' since: the network must be traced again."""
    traced = block.__dict__.get("_traced_grad_reqs", {})
    params = {param.name: param for param in block.params.values()}
    return any((req == "add") != (params[name].grad_req == "add")
               for name, req in traced.items() if name in params)


def _whole_blocks(width: int) -> int:
    """``width`` channels rounded up to whole oneDNN channel blocks."""
    return -(-width // ONEDNN_CHANNEL_BLOCK) * ONEDNN_CHANNEL_BLOCK


class GroupedConv2D(nn.Conv2D):
    """``nn.Conv2D`` (same parameters, names and results) that can run its groups as separate
    dense convolutions, or as the compiled Winograd operator.

    Parameters
    ----------
    grouped_conv : str
        One of :data:`GROUPED_CONVS`. With "split-narrow", a convolution whose groups are
        narrower than, or not a multiple of, 16 input channels splits its input and weight
        per group, convolves each and concatenates the outputs. With "winograd", a 3x3
        convolution with stride 1, padding 1, no dilation or bias runs as
        ``resnest_conv3x3`` where padding its groups to whole 16-channel blocks costs at most
        :data:`WINOGRAD_MAX_PADDING` times the multiplications; any other as with
        "split-narrow".
    *args, **kwargs
        Those of ``nn.Conv2D`` (``in_channels`` and ``groups`` must be given).
    """

    def __init__(self, *args, grouped_conv=PORTABLE_CONV, **kwargs):
        super().__init__(*args, **kwargs)
        if grouped_conv not in GROUPED_CONVS:
            raise ValueError(f"grouped_conv must be one of {GROUPED_CONVS}, got "
                             f"{grouped_conv!r}")
        groups = self._kwargs["num_group"]
        width = self._in_channels // groups
        self.split_groups = (grouped_conv != "single" and groups > 1
                             and width % ONEDNN_CHANNEL_BLOCK != 0)
        self.winograd = grouped_conv == "winograd" and self._winograd_shaped()
        # set by SplitAttentionConv where its compiled BatchNorm reads the output: the Winograd
        # operator then leaves it in the kernels' group-blocked layout, no copy back
        self.blocked_output = False
        if self.winograd:
            extension.load_winograd_conv()

    def stale(self) -> bool:
        """Whether the traced graph no longer honours the weight's ``grad_req`` (changed to or
        from 'add' since): the network must be traced again."""
        return self.winograd and _stale(self)

    def _winograd_shaped(self) -> bool:
        """Whether this convolution is one the Winograd operator computes."""
        k = self._kwargs
        widths = (self._in_channels // k["num_group"], self._channels // k["num_group"])
        padding = math.prod(_whole_blocks(w) / w for w in widths)
        return (tuple(k["kernel"]) == (3, 3) and tuple(k["stride"]) == (1, 1)
                and tuple(k["pad"]) == (1, 1) and tuple(k["dilate"]) == (1, 1)
                and k["no_bias"] and padding <= WINOGRAD_MAX_PADDING)

    @property
    def group_blocks(self) -> bool:
        """Whether every group's output channels fill whole 16-channel blocks (the
        Winograd operator's group-blocked output needs them)."""
        return (self._channels // self._kwargs["num_group"]) % ONEDNN_CHANNEL_BLOCK == 0

    def hybrid_forward(self, F, x, weight, bias=None):
        groups = self._kwargs["num_group"]
        if self.winograd:
            # x in MXNet's plain layout inside the planned graph (an identity reshape converts
            # a oneDNN-layout array): the extension API would convert it into an unplanned
            # temporary array on every call (see the radix sum)
            return getattr(F, extension.CONV3X3_OP)(F.reshape(x, (0, 0, 0, 0)),
                                                    _traced(self, F, self.weight, weight),
                                                    groups=groups,
                                                    blocked_output=int(self.blocked_output))
        if not self.split_groups:
            return super().hybrid_forward(F, x, weight, bias)
        kwargs = dict(self._kwargs, num_group=1, num_filter=self._channels // groups)
        inputs = F.split(x, num_outputs=groups, axis=1)
        weights = F.split(weight, num_outputs=groups, axis=0)
        biases = F.split(bias, num_outputs=groups, axis=0) if bias is not None else None
        outputs = [F.Convolution(inputs[g], weights[g], *([] if bias is None else [biases[g]]),
                                 **kwargs) for g in range(groups)]
        return F.concat(*outputs, dim=1)


class BatchNormReLU(nn.BatchNorm):
    """``nn.BatchNorm`` followed by a ReLU (the same parameters, names and results). With
    ``plain_kernel`` set (by :class:`SplitAttentionConv`, after the Winograd convolution) both
    run as the compiled ``resnest_batchnorm_relu``: that convolution's output is in MXNet's
    plain layout, where MXNet's oneDNN BatchNorm runs a reference kernel several times slower
    than on a blocked array (docs/benchmarks.md).

    With ``channel_means`` also set, the compiled operator's call returns ``(y, means)``: the
    spatial means of y per image and channel, (N, C), computed in the same pass (see
    :attr:`returns_means`). With ``blocked_groups`` > 0 its input is the group-blocked output
    of a Winograd convolution with that many groups (``GroupedConv2D.blocked_output``); y is
    plain.

    Parameters
    ----------
    *args, **kwargs
        Those of ``nn.BatchNorm``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.plain_kernel = False
        self.channel_means = False
        self.blocked_groups = 0

    @property
    def returns_means(self) -> bool:
        """Whether a call returns ``(y, means)`` rather than y (as traced from now on)."""
        return self.plain_kernel and self.channel_means

    def _alias(self):
        return "batchnorm"      # nn.BatchNorm's name: the published weight files' prefixes

    def use_plain_kernel(self, wanted: bool) -> None:
        """Run as the compiled operator where ``wanted``, it loads, and the settings are ones
        it computes (scaled, over axis 1); effective from the next trace."""
        k = self._kwargs
        self.plain_kernel = bool(wanted and not k["fix_gamma"] and k["axis"] == 1
                                 and extension.batchnorm_relu_available())

    def stale(self) -> bool:
        """Whether the traced graph no longer honours gamma's and beta's ``grad_req``."""
        return self.plain_kernel and _stale(self)

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        if not self.plain_kernel:
            normed = super().hybrid_forward(F, x, gamma, beta, running_mean, running_var)
            return F.Activation(normed, act_type="relu")
        k = self._kwargs
        training = train_flag(F, F.slice_axis(gamma, axis=0, begin=0, end=1))
        outputs = getattr(F, extension.BATCHNORM_RELU_OP)(
            x, _traced(self, F, self.gamma, gamma), _traced(self, F, self.beta, beta),
            running_mean, running_var, training, eps=k["eps"], momentum=k["momentum"],
            use_global_stats=int(bool(k["use_global_stats"])), blocked_groups=self.blocked_groups)
        # outputs: y, the mean and variance used (for its backward pass), y's spatial means
        return (outputs[0], outputs[3]) if self.channel_means else outputs[0]


def attention_channels(in_channels: int, radix: int, reduction: int = 4, minimum: int = 32) -> int:
    """Width of the attention bottleneck: ``max(in_channels * radix // reduction, minimum)``.

    The authors' code (PyTorch ``reduction_factor=4``, Gluon ``//2//r`` with ``r=2``) uses the
    same rule; the published weights depend on it.
    """
    return max(in_channels * radix // reduction, minimum)


def _scale_rows(F, rows, weights, like, product="batch_dot"):
    """``rows * weights``, one weight per row, shaped like ``like`` (N, C, H, W).

    With ``product="broadcast_mul"``: ``like * weights`` broadcast over H and W instead.

    ``rows`` is the (N*C, 1, HW) view of ``like``; ``weights`` holds its N*C weights. Written
    as a batched (1 x 1) @ (1 x HW) product rather than ``broadcast_mul``: the result is the
    same (one multiplication per element), but ``broadcast_mul``'s backward pass goes through
    MXNet's generic reduction kernels, about ten times its forward pass, while batch_dot's
    backward is two more small products (docs/benchmarks.md). Only ``rows``
    (a view of x, which the ReLU keeps anyway) and the weights are kept for the backward pass.
    """
    if product == "broadcast_mul":
        like, weights = narrowest(F, like, F.reshape(weights, (0, -1, 1, 1)))
        return F.broadcast_mul(like, weights)
    weights, rows = narrowest(F, F.reshape(weights, (-1, 1, 1)), rows)
    scaled = F.batch_dot(weights, rows)     # (N*C, 1, HW)
    return F.reshape_like(scaled, like)


def _with_spatial(F, planes, spatial):
    """The (N, C, HW) ``planes`` viewed as (N, C, H, W), H and W those of ``spatial``."""
    return F.reshape_like(planes, spatial, lhs_begin=2, lhs_end=3, rhs_begin=2, rhs_end=4)


def _plain_layout_gradient(F, summed):
    """``summed`` unchanged; its gradient reaches the radix sum in MXNet's plain layout.

    The layer after split attention (a oneDNN convolution or pooling) hands back its input
    gradient in a oneDNN blocked layout. ``add_n``'s gradient passes that array on once per
    split, and ``split``'s gradient (a plain-layout kernel) then converts every copy into a
    temporary buffer of its own: one split-sized buffer per block more than gluoncv's
    ``sum``, whose single broadcast converts once. ``expand_dims`` + ``squeeze`` are free
    views in the forward pass and plain-layout kernels in the backward pass, so the conversion
    happens once, here, before the gradient fans out (docs/memory.md has the measurements).
    """
    return F.squeeze(F.expand_dims(summed, axis=0), axis=0)


class SplitAttentionConv(nn.HybridBlock):
    """Grouped convolution followed by split attention over ``radix`` splits.

    Parameters
    ----------
    channels : int
        Output channels (``C``); the convolution itself produces ``radix * C``.
    kernel_size, strides, padding, dilation : int
        Geometry of the grouped convolution.
    cardinality : int
        Number of cardinal groups ``K``; ``C`` must be divisible by it.
    radix : int
        Number of splits ``R`` per cardinal group (>= 1). With ``R == 1`` the attention is a
        per-channel sigmoid gate (squeeze-excitation style), otherwise a softmax over splits.
    in_channels : int
        Input channels; must be divisible by ``K * R``.
    attention_dropout : float
        Dropout rate on the attention bottleneck (0 disables it).
    norm_kwargs : dict, optional
        Extra keyword arguments for the BatchNorm layers.
    attention_product : str
        How the weights multiply the splits (:data:`ATTENTION_PRODUCTS`): the same result.
    grouped_conv : str
        How the grouped convolution runs (:data:`GROUPED_CONVS`): the same result.

    Notes
    -----
    Parameter names (``conv``, ``bn``, ``fc1``, ``bn1``, ``fc2``) follow the published Gluon
    weights, so those files load without conversion.
    """

    def __init__(self, channels, kernel_size=3, strides=1, padding=1, dilation=1,
                 cardinality=1, radix=2, in_channels=0, attention_dropout=0.0,
                 norm_kwargs=None, attention_product="batch_dot", grouped_conv=PORTABLE_CONV,
                 **kwargs):
        super().__init__(**kwargs)
        if radix < 1:
            raise ValueError(f"radix must be >= 1 for split attention, got {radix}")
        if attention_product not in ATTENTION_PRODUCTS:
            raise ValueError(f"attention_product must be one of {ATTENTION_PRODUCTS}, got "
                             f"{attention_product!r}")
        if attention_product == "radix_sum":
            extension.load_radix_sum()
        self.attention_product = attention_product
        norm_kwargs = norm_kwargs or {}
        self.radix = radix
        self.cardinality = cardinality
        self.channels = channels
        inter_channels = attention_channels(in_channels, radix)
        # No name_scope: children are named in the enclosing scope, like the published
        # blocks, so prefixed weight files (resnest_layers1_conv1_weight, ...) match.
        self.conv = GroupedConv2D(channels * radix, kernel_size, strides, padding, dilation,
                                  groups=cardinality * radix, use_bias=False,
                                  in_channels=in_channels, grouped_conv=grouped_conv)
        self.bn = BatchNormReLU(in_channels=channels * radix, **norm_kwargs)
        # The compiled BatchNorm wherever its input is plain-layout and the compiled operators
        # run (radix_sum: CPUs, float32): after the Winograd operator, and after narrow groups
        # run apart, whose concatenated output oneDNN's BatchNorm also reads with its
        # reference kernel (7% of a 4s2x40d training step, docs/benchmarks.md).
        self.bn.use_plain_kernel(self.conv.winograd or (self.conv.split_groups
                                                        and attention_product == "radix_sum"))
        self.bn.channel_means = True
        self.fc1 = nn.Conv2D(inter_channels, 1, in_channels=channels, groups=cardinality)
        self.bn1 = nn.BatchNorm(in_channels=inter_channels, **norm_kwargs)
        self.drop = SeededDropout(attention_dropout) if attention_dropout > 0 else None
        self.fc2 = nn.Conv2D(channels * radix, 1, in_channels=inter_channels,
                             groups=cardinality)

    def _hand_over_blocked(self):
        """Where both the Winograd operator and the compiled BatchNorm run (as traced now),
        the convolution's output stays in the kernels' group-blocked layout and the BatchNorm
        reads that: the operator's copy back to the plain layout (about 8% of its time in
        inference) goes. Nothing else reads that output."""
        handoff = self.conv.winograd and self.conv.group_blocks and self.bn.plain_kernel
        self.conv.blocked_output = handoff
        self.bn.blocked_groups = self.conv._kwargs["num_group"] if handoff else 0

    def hybrid_forward(self, F, x):
        self._hand_over_blocked()
        normed = self.bn(self.conv(x))
        x, means = normed if self.bn.returns_means else (normed, None)
        radix, channels = self.radix, self.channels
        # One (N, R*C, HW) plain-layout view of x serves both the context and the weighting
        # (as (N*R*C, 1, HW) rows for batch_dot), so x is never copied into splits (split
        # copies would stay alive for the backward pass). Only the weighted result is split,
        # for the sum.
        # (reshape codes 0/-1 only: the ONNX exporter cannot translate code -3)
        planes = F.reshape(x, (0, 0, -1))
        # Context: the spatial mean of the sum of the splits = the sum over the splits of
        # their channel means (from the compiled BatchNorm, or a global pooling on the plain
        # view: oneDNN kernel, exported as GlobalAveragePool; the means are summed on the tiny
        # (N, R, C) tensor).
        # x's (H, W), read off a one-channel slice (no gradient): with x itself read again
        # beside its reshape, MXNet's static memory plan kept storage of every block alive
        # (inference memory grew by about an activation per block, docs/memory.md).
        spatial = F.BlockGrad(F.slice_axis(x, axis=1, begin=0, end=1))
        if means is None:
            means = F.Pooling(_with_spatial(F, planes, spatial), kernel=(1, 1),
                              global_pool=True, pool_type="avg")
        context = F.reshape(F.sum(F.reshape(means, (0, radix, channels)), axis=1),
                            (0, 0, 1, 1))
        weights = self._weights(F, context)
        if self.attention_product == "radix_sum":
            # (its gradient needs no _plain_layout_gradient: the operator reads it once, and
            # the extension API's own conversion costs less time and memory than the copy)
            summed = getattr(F, extension.RADIX_SUM_OP)(planes, weights, radix=radix)
            return _with_spatial(F, summed, spatial)
        weighted = _scale_rows(F, F.reshape(planes, (-1, 1, 0)), weights, x,
                               self.attention_product)
        if radix == 1:
            return weighted
        # split + add_n, not a sum over a radix axis: MXNet's CPU reduction over a middle
        # axis is several times slower than these copies (docs/benchmarks.md).
        summed = F.add_n(*F.split(weighted, num_outputs=radix, axis=1))
        return _plain_layout_gradient(F, summed)

    def _weights(self, F, context):
        """The attention weights from the (N, C, 1, 1) context, radix-major like x's
        channels: a softmax over the splits (a sigmoid gate when ``radix == 1``)."""
        att = F.Activation(self.bn1(self.fc1(context)), act_type="relu")
        if self.drop is not None:
            att = self.drop(att)
        att = self.fc2(att)
        if self.radix == 1:
            return F.sigmoid(att)
        # logits are [k][r][c]; softmax over r, then lay them out radix-major [r][k][c], the
        # order of x's channels.
        att = F.reshape(att, (0, self.cardinality, self.radix, -1))
        return F.swapaxes(F.softmax(att, axis=2), 1, 2)

    def __repr__(self):
        return (f"{self.__class__.__name__}(channels={self.channels}, radix={self.radix}, "
                f"cardinality={self.cardinality})")

