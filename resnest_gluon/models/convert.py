"""Loading weights into our networks, converting the published formats.

This module owns :func:`load_weights`. Three layouts of ``.params`` files exist for Gluon
ResNeSt and all load:

* structural names (``layer1.0.conv2.fc1.weight``): ``save_parameters`` output, ours and the
  published Gluon weights (gluoncv model zoo, authors' release) alike, since our blocks keep the
  published structure;
* full prefixed names (``resnest_layers1_bottleneck0_splitattentionconv0_conv1_weight``):
  ``collect_params().save()`` output of any prefix;
* the same with ``arg:`` / ``aux:`` (``HybridBlock.export`` output).

Prefixed names are matched after removing each side's root prefix: our blocks are created in the
same order with the same class names as the published ones, so the rest of each name agrees.
"""
import logging
import os

import mxnet as mx

from ..errors import UserError, reason_of

__all__ = ["load_weights", "WeightsMismatchError", "WeightsFileError"]

log = logging.getLogger(__name__)


class WeightsMismatchError(UserError, ValueError):
    """The file's parameters do not fit the network (missing, extra or mis-shaped)."""


class WeightsFileError(UserError, FileNotFoundError, ValueError):
    """A weights file that is missing or not an MXNet parameter file."""


def _strip_kind(name):
    return name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name


def _root_prefix(names):
    common = os.path.commonprefix(list(names))
    return common[: common.rfind("_") + 1] if "_" in common else ""


def _read(path):
    if os.path.isdir(path):
        raise WeightsFileError(f"weights file {path} is a folder (give a .params file in it)")
    if not os.path.isfile(path):
        raise WeightsFileError(f"weights file not found: {path}")
    try:
        loaded = mx.nd.load(path)
    except mx.base.MXNetError as err:
        raise WeightsFileError(f"{path} is not an MXNet .params file "
                               f"({reason_of(err)})") from None
    if not isinstance(loaded, dict) or not loaded:
        raise WeightsFileError(f"{path} holds no named parameters")
    return {_strip_kind(k): v for k, v in loaded.items()}


def match_parameters(net, loaded):
    """Map a loaded ``{name: NDArray}`` onto ``net``'s structural parameter names.

    Returns
    -------
    dict
        ``{structural_name: NDArray}`` covering every parameter of ``net``.

    Raises
    ------
    WeightsMismatchError
        If names cannot be matched or shapes differ; the message lists examples.
    """
    params = net._collect_params_with_prefix()  # pylint: disable=protected-access
    if set(loaded) >= set(params):
        matched = {name: loaded[name] for name in params}
        extra = set(loaded) - set(params)
    else:
        file_root = _root_prefix(loaded)
        net_root = _root_prefix(p.name for p in params.values())
        by_suffix = {name[len(file_root):]: arr for name, arr in loaded.items()}
        matched, missing = {}, []
        for name, param in params.items():
            key = param.name[len(net_root):]
            if key in by_suffix:
                matched[name] = by_suffix.pop(key)
            else:
                missing.append(name)
        extra = set(by_suffix)
        if missing:
            raise WeightsMismatchError(
                f"{len(missing)} parameter(s) of the network are not in the file, e.g. "
                f"{missing[:3]}; the file has e.g. {sorted(loaded)[:3]}. Is it a weights file "
                f"for this model (depth, radix, cardinality, width)?")
    if extra:
        raise WeightsMismatchError(
            f"the file has {len(extra)} parameter(s) the network lacks, e.g. {sorted(extra)[:3]}"
            f"; is it a weights file for this model?")
    wrong = [(name, tuple(arr.shape), params[name].shape) for name, arr in matched.items()
             if params[name].shape and not _shape_fits(params[name].shape, arr.shape)]
    if wrong:
        name, got, want = wrong[0]
        raise WeightsMismatchError(
            f"{len(wrong)} parameter(s) have the wrong shape, e.g. {name}: file {got}, network "
            f"{want}: the file is for {got[0]} classes (data.num_classes={got[0]}, "
            f"--num-classes {got[0]}, get_model(classes={got[0]}))"
            if name.startswith("fc.") else
            f"{len(wrong)} parameter(s) have the wrong shape, e.g. {name}: file {got}, "
            f"network {want}")
    return matched


def _shape_fits(want, got):
    # 0 marks a dimension still to be inferred (deferred initialisation).
    return len(want) == len(got) and all(w in (0, g) for w, g in zip(want, got))


def load_weights(net, path, ctx=None):
    """Load a ``.params`` file of any supported layout into ``net`` (see module docstring).

    Parameters
    ----------
    net : mxnet.gluon.Block
        The network, initialised or not.
    path : str
        The weights file.
    ctx : mxnet.Context or list, optional
        Where to place the weights (default CPU).
    """
    ctx = ctx or mx.cpu()
    matched = match_parameters(net, _read(path))
    params = net._collect_params_with_prefix()  # pylint: disable=protected-access
    for name, arr in matched.items():
        # The same call load_parameters() makes; it also settles deferred shapes.
        params[name]._load_init(  # pylint: disable=protected-access
            arr, ctx, cast_dtype=True, dtype_source="current")
    log.info("loaded %d parameters from %s", len(matched), path)
