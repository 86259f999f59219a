"""DropBlock regularisation (Ghiasi et al., 2018) that stays correct after ``hybridize()``.

This module owns :class:`DropBlock`, :func:`set_dropblock_prob`, :class:`SeededDropout` and
:func:`train_flag` (the run-time train flag that the compiled BatchNorm reads too).

Why it is written this way
--------------------------
The authors' Gluon version branched on ``autograd.is_training()`` in Python inside
``hybrid_forward``: a hybridized graph freezes whichever branch was traced first, so a net traced
in training kept dropping blocks at inference (or never dropped them). Here the graph is the same
in both modes; whether it drops is decided at run time by a ``Dropout`` operator, the one op whose
behaviour MXNet switches on the train flag: ``(Dropout(1, p=0.5) - 1) ** 2`` is exactly 1 in
training (Dropout yields 0 or 2) and exactly 0 in inference (Dropout is the identity). Seeds are
drawn with probability ``gamma * flag``, so in inference no seed is ever drawn, the mask is all
ones, the scale is exactly 1 and the output equals the input bit for bit.

The drop probability is a Python attribute: changing it through :func:`set_dropblock_prob`
clears the cached graphs of the whole net so the new value takes effect on the next call.
"""
from mxnet.gluon import nn

from .precision import narrowest

__all__ = ["DropBlock", "set_dropblock_prob", "get_dropblock_prob", "SeededDropout",
           "train_flag"]


def train_flag(F, like):
    """1 in training, 0 in inference, decided when the graph runs (see the module notes),
    shaped like ``like``; no gradient flows through it."""
    return F.BlockGrad(F.square(F.Dropout(F.ones_like(like), p=0.5) - 1))


class DropBlock(nn.HybridBlock):
    """Drop contiguous ``block_size x block_size`` regions of a feature map, per sample.

    Parameters
    ----------
    drop_prob : float
        Fraction of activations to drop (the paper's "keep_prob = 1 - drop_prob"); 0 disables.
    block_size : int
        Side of the dropped squares (odd, so the mask stays centred).

    Notes
    -----
    Seeds are sampled with ``gamma = p * H * W / (b^2 * (H - b + 1) * (W - b + 1))``, computed
    from the run-time shape, independently for every sample and channel; each sample is then
    rescaled by ``numel / kept`` so the expected activation is unchanged.
    """

    def __init__(self, drop_prob=0.0, block_size=3, **kwargs):
        super().__init__(**kwargs)
        if block_size < 1 or block_size % 2 == 0:
            raise ValueError(f"DropBlock block_size must be a positive odd number, got "
                             f"{block_size}")
        _check_prob(drop_prob)
        self.drop_prob = float(drop_prob)
        self.block_size = int(block_size)
        self._dtype = "float32"

    def hybrid_forward(self, F, x):
        if self.drop_prob <= 0:
            return x
        b = self.block_size
        shape = F.cast(F.shape_array(x), dtype="float32")            # [N, C, H, W]
        h = F.slice_axis(shape, axis=0, begin=2, end=3)
        w = F.slice_axis(shape, axis=0, begin=3, end=4)
        valid = F.maximum(h - (b - 1), 1) * F.maximum(w - (b - 1), 1)
        gamma = self.drop_prob / (b * b) * (h * w) / valid            # shape (1,)
        gamma = F.cast(F.reshape(gamma * train_flag(F, gamma), (1, 1, 1, 1)),
                       dtype=self._dtype)
        # The mask is built in x's dtype (under AMP: float16, see narrowest); only the count
        # of kept units, a sum of up to C*H*W ones that float16 cannot hold, is float32.
        noise, gamma = narrowest(F, F.random.uniform_like(x, low=0.0, high=1.0), gamma)
        seeds = F.broadcast_lesser(noise, gamma)
        dropped = F.Pooling(seeds, kernel=(b, b), stride=(1, 1), pad=(b // 2, b // 2),
                            pool_type="max")
        keep = 1 - dropped
        kept_fraction = F.mean(F.cast(keep, dtype="float32"), axis=(1, 2, 3), keepdims=True)
        kept_fraction = F.cast(F.maximum(kept_fraction, 1e-6), dtype=self._dtype)
        keep, kept_fraction = narrowest(F, keep, kept_fraction)
        x, mask = narrowest(F, x, F.broadcast_div(keep, kept_fraction))
        return x * mask

    def cast(self, dtype):
        super().cast(dtype)
        # The graph needs the dtype of x to build its mask; a block without parameters has no
        # other record of it.
        self._dtype = dtype

    def __repr__(self):
        return (f"{self.__class__.__name__}(drop_prob={self.drop_prob}, "
                f"block_size={self.block_size})")


def _check_prob(p):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"DropBlock drop probability must be in [0, 1), got {p}")


def set_dropblock_prob(net, drop_prob: float) -> int:
    """Set the drop probability of every :class:`DropBlock` inside ``net``.

    Works on a hybridized net: the cached graphs are cleared so the next forward pass traces
    the new value. The network places DropBlock layers only where the recipe wants them
    (stages 3 and 4), so this reaches exactly those.

    Parameters
    ----------
    net : mxnet.gluon.Block
        The network.
    drop_prob : float
        New probability in ``[0, 1)``.

    Returns
    -------
    int
        Number of DropBlock layers updated.
    """
    _check_prob(drop_prob)
    updated = 0

    def visit(block):
        nonlocal updated
        if isinstance(block, DropBlock):
            block.drop_prob = float(drop_prob)
            updated += 1
        if isinstance(block, nn.HybridBlock):
            block._clear_cached_op()  # pylint: disable=protected-access

    net.apply(visit)
    return updated


def get_dropblock_prob(net) -> float:
    """Return the largest drop probability of the DropBlock layers in ``net`` (0 if none)."""
    probs = []
    net.apply(lambda b: probs.append(b.drop_prob) if isinstance(b, DropBlock) else None)
    return max(probs, default=0.0)


class SeededDropout(nn.HybridBlock):
    """Dropout whose masks come from MXNet's seeded generators on every device.

    On GPUs, Gluon's ``nn.Dropout`` runs cuDNN dropout, which keeps a generator state of its
    own that ``mx.random.seed`` does not reset, so a resumed run would draw other masks;
    ``cudnn_off=True`` uses the generators the training loop reseeds every step. On CPUs the
    two are the same operator.
    """

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        _check_prob(rate)
        self.rate = float(rate)

    def hybrid_forward(self, F, x):
        return F.Dropout(x, p=self.rate, cudnn_off=True)

    def __repr__(self):
        return f"{self.__class__.__name__}(p={self.rate})"
