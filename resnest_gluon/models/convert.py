"""Loading weights into our networks, from every published format.

This module owns :func:`load_weights` and the name rules between the formats
(:mod:`.weight_files` reads the bytes). Files and their names:

* Gluon ``.params`` with structural names (``layer1.0.conv2.fc1.weight``):
  ``save_parameters`` output, ours and the published Gluon weights (gluoncv model zoo,
  authors' release) alike, since our blocks keep the published structure;
* Gluon ``.params`` with full prefixed names
  (``resnest_layers1_bottleneck0_splitattentionconv0_conv1_weight``, ``collect_params().save()``
  output of any prefix), also with ``arg:`` / ``aux:`` (``HybridBlock.export`` output): matched
  after removing each side's root prefix, since our blocks are created in the same order with
  the same class names as the published ones;
* PyTorch state dicts (``.pth``/``.pt``/``.bin``, zip or legacy format) and safetensors files
  with the authors' PyTorch names, which timm's ResNeSt models share: the same structure and
  order, so only three rules apply (:func:`torch_to_gluon_names`).
"""
import logging
import os

import mxnet as mx

from ..errors import UserError
from .weight_files import WeightsFileError, file_format, read_weight_file

__all__ = ["load_weights", "load_arrays", "read_parameters", "torch_to_gluon_names",
           "WeightsMismatchError", "WeightsFileError", "HEAD_PREFIX"]

log = logging.getLogger(__name__)

# The classifier's parameters (structural names): what a new head replaces and a backbone
# leaves out.
HEAD_PREFIX = "fc."


class WeightsMismatchError(UserError, ValueError):
    """The file's parameters do not fit the network (missing, extra or mis-shaped)."""


def _strip_kind(name):
    return name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name


def _root_prefix(names):
    common = os.path.commonprefix(list(names))
    return common[: common.rfind("_") + 1] if "_" in common else ""


def torch_to_gluon_names(arrays: dict, gluon_names) -> dict:
    """Rename a PyTorch ResNeSt state dict (authors' or timm's names) to our structural names.

    The rules: ``*.num_batches_tracked`` is dropped, a ``module.`` prefix (DataParallel) is
    removed, split attention's ``conv2.bn0.`` is our ``conv2.bn.``, and a BatchNorm's
    ``weight``/``bias`` are Gluon's ``gamma``/``beta``. No array changes: PyTorch and MXNet
    lay out convolution and dense weights alike.

    Parameters
    ----------
    arrays : dict
        ``{torch name: array}``.
    gluon_names : collection of str
        The network's structural parameter names (tells BatchNorms from convolutions).
    """
    gluon_names = set(gluon_names)
    renamed = {}
    for name, array in arrays.items():
        if name.endswith(".num_batches_tracked"):
            continue
        key = name[len("module."):] if name.startswith("module.") else name
        key = key.replace("conv2.bn0.", "conv2.bn.")
        stem, _, leaf = key.rpartition(".")
        if leaf in ("weight", "bias") and f"{stem}.gamma" in gluon_names:
            key = f"{stem}.{'gamma' if leaf == 'weight' else 'beta'}"
        renamed[key] = array
    return renamed


def read_parameters(path: str, net) -> dict:
    """``{name: NDArray}`` of any supported weights file, PyTorch names already renamed to
    ``net``'s structural names (Gluon names are matched by :func:`match_parameters`)."""
    kind = file_format(path)
    arrays = read_weight_file(path)
    if kind == "mxnet":
        arrays = {_strip_kind(k): v for k, v in arrays.items()}
    else:
        params = net._collect_params_with_prefix()  # pylint: disable=protected-access
        arrays = torch_to_gluon_names(arrays, params)
    return {name: mx.nd.array(value, dtype=value.dtype) for name, value in arrays.items()}


def _pair_names(params, loaded):
    """``(matched, missing, extra)``: the file's arrays under the network's structural names,
    the network's names the file lacks, and the file's names the network lacks."""
    if any("." in name for name in loaded):   # structural names; prefixed ones have no dots
        matched = {name: loaded[name] for name in params if name in loaded}
        return matched, [n for n in params if n not in loaded], set(loaded) - set(params)
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
    # a prefixed file's classifier is its dense layer
    extra = {HEAD_PREFIX + k if k.startswith("dense") else k for k in by_suffix}
    return matched, missing, extra


def _head(names):
    return {n for n in names if n.startswith(HEAD_PREFIX)}


def match_parameters(net, loaded, new_head: bool = False):
    """Map a loaded ``{name: NDArray}`` onto ``net``'s structural parameter names.

    A network without a classifier (a backbone) ignores the file's. With ``new_head``, a
    classifier of another shape (other classes) is left out, for the caller to initialise.

    Returns
    -------
    dict
        ``{structural_name: NDArray}`` covering every parameter of ``net`` (but the
        classifier, when ``new_head`` left it out).

    Raises
    ------
    WeightsMismatchError
        If names cannot be matched or shapes differ; the message lists examples.
    """
    params = net._collect_params_with_prefix()  # pylint: disable=protected-access
    matched, missing, extra = _pair_names(params, loaded)
    if not _head(params):
        extra -= _head(extra)
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
    if new_head and any(name.startswith(HEAD_PREFIX) for name, _, _ in wrong):
        file_classes = matched[HEAD_PREFIX + "weight"].shape[0]
        log.info("new classifier: the file's is for %d classes, the network's for %d; it "
                 "starts from its initialisation", file_classes, params[HEAD_PREFIX + "weight"]
                 .shape[0])
        matched = {k: v for k, v in matched.items() if not k.startswith(HEAD_PREFIX)}
        wrong = [w for w in wrong if not w[0].startswith(HEAD_PREFIX)]
    if wrong:
        name, got, want = wrong[0]
        raise WeightsMismatchError(
            f"{len(wrong)} parameter(s) have the wrong shape, e.g. {name}: file {got}, network "
            f"{want}: the file is for {got[0]} classes (data.num_classes={got[0]}, "
            f"--num-classes {got[0]}, get_model(classes={got[0]}))"
            if name.startswith(HEAD_PREFIX) else
            f"{len(wrong)} parameter(s) have the wrong shape, e.g. {name}: file {got}, "
            f"network {want}")
    return matched


def _shape_fits(want, got):
    # 0 marks a dimension still to be inferred (deferred initialisation).
    return len(want) == len(got) and all(w in (0, g) for w, g in zip(want, got))


def load_weights(net, path, ctx=None, new_head: bool = False) -> set:
    """Load a weights file of any supported format into ``net`` (see module docstring).

    Parameters
    ----------
    net : mxnet.gluon.Block
        The network (a classifier or a backbone), initialised or not.
    path : str
        The weights file: Gluon ``.params``, PyTorch ``.pth``/``.pt``/``.bin`` or
        ``.safetensors``.
    ctx : mxnet.Context or list, optional
        Where to place the weights (default CPU).
    new_head : bool
        Fine-tuning onto other classes: a classifier of another shape is not loaded.

    Returns
    -------
    set
        Structural names of the parameters not loaded (a new classifier's), to initialise.
    """
    return load_arrays(net, read_parameters(path, net), ctx, new_head, source=path)


def load_arrays(net, arrays: dict, ctx=None, new_head: bool = False, source: str = "arrays"
                ) -> set:
    """:func:`load_weights` for arrays already read (:func:`read_parameters`)."""
    matched = match_parameters(net, arrays, new_head=new_head)
    params = net._collect_params_with_prefix()  # pylint: disable=protected-access
    for name, arr in matched.items():
        # The same call load_parameters() makes; it also settles deferred shapes.
        params[name]._load_init(  # pylint: disable=protected-access
            arr, ctx or mx.cpu(), cast_dtype=True, dtype_source="current")
    log.info("loaded %d parameters from %s", len(matched), source)
    return set(params) - set(matched)
