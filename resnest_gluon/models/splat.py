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
"""
from mxnet.gluon import nn

__all__ = ["SplitAttentionConv", "attention_channels"]


def attention_channels(in_channels: int, radix: int, reduction: int = 4, minimum: int = 32) -> int:
    """Width of the attention bottleneck: ``max(in_channels * radix // reduction, minimum)``.

    The authors' code (PyTorch ``reduction_factor=4``, Gluon ``//2//r`` with ``r=2``) uses the
    same rule; the published weights depend on it.
    """
    return max(in_channels * radix // reduction, minimum)


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

    Notes
    -----
    Parameter names (``conv``, ``bn``, ``fc1``, ``bn1``, ``fc2``) follow the published Gluon
    weights, so those files load without conversion.
    """

    def __init__(self, channels, kernel_size=3, strides=1, padding=1, dilation=1,
                 cardinality=1, radix=2, in_channels=0, attention_dropout=0.0,
                 norm_kwargs=None, **kwargs):
        super().__init__(**kwargs)
        if radix < 1:
            raise ValueError(f"radix must be >= 1 for split attention, got {radix}")
        norm_kwargs = norm_kwargs or {}
        self.radix = radix
        self.cardinality = cardinality
        self.channels = channels
        inter_channels = attention_channels(in_channels, radix)
        # No name_scope: children are named in the enclosing scope, like the published
        # blocks, so prefixed weight files (resnest_layers1_conv1_weight, ...) match.
        self.conv = nn.Conv2D(channels * radix, kernel_size, strides, padding, dilation,
                              groups=cardinality * radix, use_bias=False,
                              in_channels=in_channels)
        self.bn = nn.BatchNorm(in_channels=channels * radix, **norm_kwargs)
        self.fc1 = nn.Conv2D(inter_channels, 1, in_channels=channels, groups=cardinality)
        self.bn1 = nn.BatchNorm(in_channels=inter_channels, **norm_kwargs)
        self.drop = nn.Dropout(attention_dropout) if attention_dropout > 0 else None
        self.fc2 = nn.Conv2D(channels * radix, 1, in_channels=inter_channels,
                             groups=cardinality)

    def hybrid_forward(self, F, x):
        x = F.Activation(self.bn(self.conv(x)), act_type="relu")
        if self.radix > 1:
            # split + add_n, not a 5-D view + sum(axis=1): MXNet's CPU reduction over the
            # radix axis cost more than all the convolutions of ResNeSt-50 (54% of inference
            # time, profiled); split/add_n are memory copies and it exports to ONNX.
            splits = F.split(x, num_outputs=self.radix, axis=1)
            context = F.add_n(*splits)
        else:
            context = x
        # global average pooling (oneDNN kernel; exports as GlobalAveragePool)
        context = F.Pooling(context, kernel=(1, 1), global_pool=True, pool_type="avg")
        att = F.Activation(self.bn1(self.fc1(context)), act_type="relu")
        if self.drop is not None:
            att = self.drop(att)
        att = self.fc2(att)
        if self.radix == 1:
            return F.broadcast_mul(x, F.sigmoid(att))
        # logits are [k][r][c]; softmax over r, then lay them out radix-major [r][k][c].
        att = F.reshape(att, (0, self.cardinality, self.radix, -1))
        att = F.swapaxes(F.softmax(att, axis=2), 1, 2)
        weights = F.split(F.reshape(att, (0, self.radix, self.channels)),
                          num_outputs=self.radix, axis=1, squeeze_axis=True)
        return F.add_n(*[F.broadcast_mul(split, F.reshape(w, (0, 0, 1, 1)))
                         for split, w in zip(splits, weights)])

    def __repr__(self):
        return (f"{self.__class__.__name__}(channels={self.channels}, radix={self.radix}, "
                f"cardinality={self.cardinality})")

