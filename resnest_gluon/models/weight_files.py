"""Reading weight files of every published format into ``{name: numpy array}``, without torch.

This module owns :func:`read_weight_file`, which recognises a file by its first bytes (not
its extension: timm's ``pytorch_model.bin`` is a PyTorch file) and reads:

* MXNet ``.params`` files (``mx.nd.save`` / ``save_parameters`` / ``export`` output);
* PyTorch state dicts in torch's zip format (torch >= 1.6: ``<root>/data.pkl`` and one raw
  file per storage in ``<root>/data/``) and in its legacy format (the 2020 release files: five
  pickles in a row, the storages' bytes after the last);
* safetensors files (through the ``safetensors`` package's NumPy API).

A ``.pth`` is a pickle, and a pickle can run any code it names. The unpickler here resolves
only the few globals a state dict needs (the tensor rebuild functions, ``OrderedDict`` and the
storage types, see :data:`ALLOWED_GLOBALS`); any other global stops the read with a
:class:`WeightsFileError` naming it, before it is called. Tensors become NumPy arrays in the
file's own dtype (bfloat16, which NumPy lacks, widens to float32).
"""
import collections
import io
import json
import os
import pickle
import struct
import zipfile
from typing import Dict

import mxnet as mx
import numpy as np

from ..errors import UserError, reason_of

__all__ = ["read_weight_file", "file_format", "WeightsFileError", "ALLOWED_GLOBALS"]


class WeightsFileError(UserError, FileNotFoundError, ValueError):
    """A weights file that is missing, unsafe or in no format this reader knows."""


# Storage classes torch pickles, with the NumPy dtype of their elements.
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_MXNET_MAGIC = 0x112


class _Storage:
    """A torch storage named in the pickle; its bytes are attached once read."""

    def __init__(self, dtype, key, numel):
        self.dtype, self.key, self.numel = dtype, str(key), int(numel)
        self.data = None

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize

    def array(self) -> np.ndarray:
        if self.data is None:
            raise WeightsFileError(f"storage {self.key} has no data in the file")
        if self.dtype == "bfloat16":   # the upper half of a float32
            raw = np.frombuffer(self.data, dtype="<u2", count=self.numel)
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return np.frombuffer(self.data, dtype=np.dtype(self.dtype).newbyteorder("<"),
                             count=self.numel)


class _Tensor:
    """A tensor as pickled: a view (offset, size, stride) of a storage read later."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(size), tuple(stride)

    def array(self) -> np.ndarray:
        flat = self.storage.array()
        if not self.size:
            return flat[self.offset:self.offset + 1].reshape(()).copy()
        item = flat.itemsize
        return np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size,
            strides=[s * item for s in self.stride]).copy()


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    if not isinstance(storage, _Storage):
        raise WeightsFileError("a tensor in the file is not backed by a storage")
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    return data


def _storage_type(name):
    return name   # a marker: persistent_load looks the dtype up by this name


# Every global the unpickler resolves, and what it resolves to. Nothing else is importable.
ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _storage_type(name) for name in _STORAGE_DTYPES},
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles a state dict; any global outside :data:`ALLOWED_GLOBALS` is refused."""

    def __init__(self, stream, path, storages):
        super().__init__(stream)
        self._path, self._storages = path, storages

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise WeightsFileError(
                f"{self._path} is not a plain weights file: its pickle calls {module}.{name}, "
                f"which a state dict never needs; refused without running it") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage")):
            raise WeightsFileError(f"{self._path}: unknown persistent record {str(pid)[:60]}")
        type_name, key, numel = pid[1], pid[2], pid[4]
        if type_name not in _STORAGE_DTYPES:
            raise WeightsFileError(f"{self._path}: unknown storage type {type_name!r}")
        key = str(key)
        if key not in self._storages:
            self._storages[key] = _Storage(_STORAGE_DTYPES[type_name], key, numel)
        return self._storages[key]


def _unpickle(stream, path, storages=None):
    try:
        return _SafeUnpickler(stream, path, storages if storages is not None else {}).load()
    except WeightsFileError:
        raise
    except Exception as err:   # a damaged pickle raises any of a dozen types
        raise WeightsFileError(f"{path} is damaged: its pickle does not read "
                               f"({type(err).__name__}: {err})") from None


def _read_zip(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise WeightsFileError(f"{path} is a zip file but not a PyTorch checkpoint "
                                   f"(no data.pkl)")
        root = pickles[0][: -len("data.pkl")]
        order = root + "byteorder"
        if order in names and archive.read(order).strip() != b"little":
            raise WeightsFileError(f"{path} was saved big-endian; load and re-save it with "
                                   f"torch on a little-endian machine")
        storages = {}
        state = _unpickle(io.BytesIO(archive.read(pickles[0])), path, storages)
        for key, storage in storages.items():
            try:
                storage.data = archive.read(f"{root}data/{key}")
            except KeyError:
                raise WeightsFileError(f"{path} is damaged: storage {key} is missing") from None
    return state


def _read_legacy(path) -> dict:
    storages = {}
    with open(path, "rb") as stream:
        if _unpickle(stream, path) != _LEGACY_MAGIC:
            raise WeightsFileError(f"{path} is a pickle but not a PyTorch checkpoint "
                                   f"(wrong magic number)")
        version = _unpickle(stream, path)
        if version != _LEGACY_PROTOCOL:
            raise WeightsFileError(f"{path}: PyTorch legacy format version {version!r}, "
                                   f"expected {_LEGACY_PROTOCOL}")
        sys_info = _unpickle(stream, path)
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise WeightsFileError(f"{path} was saved big-endian")
        state = _unpickle(stream, path, storages)
        keys = _unpickle(stream, path)
        for key in keys:
            storage = storages.get(str(key))
            header = stream.read(8)
            if storage is None or len(header) < 8:
                raise WeightsFileError(f"{path} is damaged: storage {key} is missing")
            numel = struct.unpack("<q", header)[0]
            nbytes = numel * storage.itemsize
            storage.data = stream.read(nbytes)
            if len(storage.data) < nbytes:
                raise WeightsFileError(f"{path} is truncated (storage {key})")
            storage.numel = numel
    return state


def _flatten_state(state, path) -> Dict[str, np.ndarray]:
    """The tensors of a state dict as arrays; a checkpoint holding its state dict under
    ``state_dict``/``model``/``state_dict_ema`` is unwrapped."""
    if isinstance(state, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if isinstance(state.get(key), dict) and not any(
                    isinstance(v, _Tensor) for v in state.values()):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise WeightsFileError(f"{path} holds a {type(state).__name__}, not a state dict")
    arrays = {str(k): v.array() for k, v in state.items() if isinstance(v, _Tensor)}
    if not arrays:
        raise WeightsFileError(f"{path} holds no tensors")
    return arrays


def _read_mxnet(path) -> Dict[str, np.ndarray]:
    try:
        loaded = mx.nd.load(path)
    except mx.base.MXNetError as err:
        raise WeightsFileError(f"{path} is not an MXNet .params file "
                               f"({reason_of(err)})") from None
    if not isinstance(loaded, dict) or not loaded:
        raise WeightsFileError(f"{path} holds no named parameters")
    return {k: v.asnumpy() for k, v in loaded.items()}


def _read_safetensors(path) -> Dict[str, np.ndarray]:
    """Through the safetensors package; bfloat16 tensors, which NumPy lacks, are widened
    here from the header's offsets."""
    from safetensors import SafetensorError, safe_open
    try:
        with open(path, "rb") as stream:
            length = struct.unpack("<Q", stream.read(8))[0]
            header = json.loads(stream.read(length))
            start = 8 + length
            wide = {}
            for name, entry in header.items():
                if name != "__metadata__" and entry.get("dtype") == "BF16":
                    begin, end = entry["data_offsets"]
                    stream.seek(start + begin)
                    storage = _Storage("bfloat16", name, (end - begin) // 2)
                    storage.data = stream.read(end - begin)
                    wide[name] = storage.array().reshape(entry["shape"])
        with safe_open(path, framework="numpy") as handle:
            return {name: wide[name] if name in wide else handle.get_tensor(name)
                    for name in handle.keys()}
    except (SafetensorError, ValueError, TypeError, KeyError, struct.error) as err:
        raise WeightsFileError(f"{path} is not a readable safetensors file ({err})") from None


def file_format(path: str) -> str:
    """``mxnet``, ``torch-zip``, ``torch-legacy`` or ``safetensors``, from the first bytes.

    Raises
    ------
    WeightsFileError
        If ``path`` is missing, a folder, or none of these.
    """
    if os.path.isdir(path):
        raise WeightsFileError(f"weights file {path} is a folder (give a file in it)")
    if not os.path.isfile(path):
        raise WeightsFileError(f"weights file not found: {path}")
    with open(path, "rb") as stream:
        head = stream.read(16)
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) >= 8 and struct.unpack("<Q", head[:8])[0] == _MXNET_MAGIC:
        return "mxnet"
    if head[:1] == b"\x80":   # a pickle's PROTO opcode
        return "torch-legacy"
    if len(head) > 9 and head[8:9] == b"{":   # safetensors: u64 header length, JSON header
        return "safetensors"
    raise WeightsFileError(f"{path} is not a weights file this reader knows (MXNet .params, "
                           f"PyTorch .pth/.pt/.bin, safetensors)")


def read_weight_file(path: str) -> Dict[str, np.ndarray]:
    """``{name: array}`` of a weights file in any supported format (module docstring).

    Parameters
    ----------
    path : str
        The file; its format is recognised from its content.

    Returns
    -------
    dict
        Names as the file has them (PyTorch's ``layer1.0.conv1.weight``, MXNet's
        ``arg:``-prefixed or structural names), values as NumPy arrays.

    Raises
    ------
    WeightsFileError
        Missing, damaged, unsafe (a pickle naming other code) or unknown files.
    """
    kind = file_format(path)
    if kind == "mxnet":
        return _read_mxnet(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    try:
        state = _read_zip(path) if kind == "torch-zip" else _read_legacy(path)
    except zipfile.BadZipFile as err:
        raise WeightsFileError(f"{path} is a damaged zip file ({err})") from None
    return _flatten_state(state, path)
