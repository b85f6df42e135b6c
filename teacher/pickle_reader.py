"""Restricted reading of foreign network pickles (NVIDIA PyTorch and TensorFlow-era snapshots).

Nothing in a pickle is trusted: the unpickler resolves only the globals in :data:`ALLOWED` and
maps each to a harmless local function or record class. The module source text that NVIDIA
snapshots embed (``module_src`` / ``build_module_src``) is kept as an opaque string and is never
compiled, executed or imported. Any other global (``os.system``, ``builtins.eval``,
``subprocess.Popen``...) raises :class:`UnsafePickleError` before anything is called.

Results:
- NVIDIA stylegan2-ada-pytorch snapshots give plain dicts whose networks are
  :class:`PersistentRecord` objects (class name, constructor kwargs, state dict of tensors).
- TensorFlow-era snapshots give tuples of :class:`TFNetworkRecord` (name, static kwargs,
  components, variables as numpy arrays).

Whitelisted is not trusted either: a small pickle can still describe a lot of work (memoised
references make ``[x, x]`` nested 40 times a 2**40-item tree; one storage can back any number of
tensors). The reader bounds it: constructor arguments are at most :data:`MAX_DEPTH` levels and
:data:`MAX_VALUES` values when expanded, module trees at most :data:`MAX_DEPTH` levels and
:data:`MAX_ENTRIES` entries, and the bytes of storages (and of the tensors cut from them) at
most the size of the file (twice that, plus 1 MiB, for tensors). Past a bound the result is a
:class:`CorruptPickleError`, never a ``RecursionError`` or an allocation the file cannot back.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import torch

from common.cli import ToonError


class UnsafePickleError(pickle.UnpicklingError, ToonError):
    """The pickle references a global outside the whitelist."""


class CorruptPickleError(pickle.UnpicklingError, ToonError):
    """The pickle is truncated or malformed."""


MAX_DEPTH = 32  # nesting of constructor arguments, of module and of TF component trees
MAX_VALUES = 10_000  # values (and 64-character string chunks) in expanded constructor arguments
MAX_ENTRIES = 100_000  # parameters, buffers and submodules visited in one module tree
TENSOR_SLACK_BYTES = 1 << 20  # tensor bytes allowed beyond twice the storage bytes
MAX_NUMPY_PREALLOC = 1 << 16  # elements numpy's _reconstruct may allocate before BUILD


# ---------------------------------------------------------------------------------------------
# Record types the whitelisted constructors produce


class AttrDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a dict whose keys also read as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.update(state)


@dataclass
class PersistentRecord:
    """A module pickled by NVIDIA's ``persistence`` decorator, reduced to data."""

    class_name: str
    version: int
    module_src: str  # opaque text; never executed
    state: dict

    @property
    def init_args(self) -> tuple:
        args = self.state.get("_init_args", ())
        if not isinstance(args, (tuple, list)):
            raise CorruptPickleError(f"_init_args is {_kind(args)}, expected a tuple")
        return tuple(_plain(args, "_init_args"))

    @property
    def init_kwargs(self) -> dict:
        kwargs = self.state.get("_init_kwargs", {})
        if not isinstance(kwargs, dict):
            raise CorruptPickleError(f"_init_kwargs is {_kind(kwargs)}, expected a dict")
        return _plain(kwargs, "_init_kwargs")

    def state_dict(self) -> OrderedDict[str, torch.Tensor]:
        """Walk ``_parameters``, ``_buffers`` and ``_modules`` like ``nn.Module.state_dict``."""
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        _walk_module_state(self.state, "", out)
        return out


@dataclass
class ModuleRecord:
    """A nested ``torch.nn.Module`` inside a persistent record (its ``__dict__`` as data)."""

    class_name: str
    state: dict = field(default_factory=dict)

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}


class TFNetworkRecord:
    """``dnnlib.tflib.network.Network`` as data: name, kwargs, components, variables."""

    def __init__(self) -> None:
        self.name = ""
        self.version = 0
        self.static_kwargs: dict = {}
        self.components: dict = {}
        self.build_module_src = ""  # opaque text; never executed
        self.build_func_name = ""
        self.variables: dict[str, np.ndarray] = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or "variables" not in state:
            raise CorruptPickleError("TensorFlow network record without variables")
        self.version = int(state.get("version", 0))
        self.name = str(state.get("name", ""))
        self.static_kwargs = _plain(state.get("static_kwargs", {}), "static_kwargs")
        components = state.get("components", {})
        variables = state["variables"]
        if not isinstance(components, dict) or not isinstance(variables, (list, tuple)):
            raise CorruptPickleError("TensorFlow network record with malformed components")
        self.components = dict(components)
        self.build_module_src = str(state.get("build_module_src", ""))
        self.build_func_name = str(state.get("build_func_name", ""))
        self.variables = {}
        for item in variables:
            if (
                not isinstance(item, (list, tuple))
                or len(item) != 2
                or not isinstance(item[0], str)
                or not isinstance(item[1], (np.ndarray, np.generic))
            ):
                raise CorruptPickleError("TensorFlow variable that is not a (name, array) pair")
            self.variables[item[0]] = np.asarray(item[1])

    def all_variables(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Own variables plus those of components, as ``component/var`` names.

        Components form a tree of at most :data:`MAX_DEPTH` levels; a component that contains
        itself, or a tree deeper than that, is a :class:`CorruptPickleError`."""
        out: dict[str, np.ndarray] = {}
        todo: list[tuple[TFNetworkRecord, str, int]] = [(self, prefix, 0)]
        seen: set[int] = set()
        while todo:
            rec, pre, depth = todo.pop()
            if id(rec) in seen or depth > MAX_DEPTH:
                raise CorruptPickleError(
                    f"TensorFlow components at {pre or '/'!r:.80} repeat or nest too deep"
                )
            seen.add(id(rec))
            out.update({pre + k: v for k, v in rec.variables.items()})
            if len(out) > MAX_ENTRIES:
                raise CorruptPickleError(f"TensorFlow network has over {MAX_ENTRIES} variables")
            for cname, comp in rec.components.items():
                if isinstance(comp, TFNetworkRecord):
                    todo.append((comp, f"{pre}{cname}/", depth + 1))
        return out


def _kind(obj: Any) -> str:
    """``a list``, ``an int``: the type of a value, for messages that must not print it."""
    name = type(obj).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _plain(obj: Any, what: str = "value") -> Any:
    """Turn EasyDicts, OrderedDicts, numpy scalars and tuples into JSON-like Python values.

    Bounded: at most :data:`MAX_DEPTH` levels and :data:`MAX_VALUES` values after expansion
    (each shared reference counts every time it is reached; strings count one per 64
    characters), so memoised ``[x, x]`` chains and self-references end in a
    :class:`CorruptPickleError` naming ``what`` instead of exponential work or a
    ``RecursionError``. Dict keys must be strings or numbers.
    """
    budget = [MAX_VALUES]

    def walk(o: Any, depth: int) -> Any:
        budget[0] -= 1 + (len(o) // 64 if isinstance(o, (str, bytes)) else 0)
        if budget[0] < 0:
            raise CorruptPickleError(
                f"{what} expand to more than {MAX_VALUES} values (shared or repeated references)"
            )
        if depth > MAX_DEPTH:
            raise CorruptPickleError(
                f"{what} nest deeper than {MAX_DEPTH} levels (or refer to themselves)"
            )
        if isinstance(o, dict):
            out = {}
            for k, v in o.items():
                if isinstance(k, np.generic):
                    k = k.item()
                if not isinstance(k, (str, int, float)):
                    raise CorruptPickleError(f"{what} have a key that is {_kind(k)}")
                out[str(k)] = walk(v, depth + 1)
            return out
        if isinstance(o, (list, tuple)):
            return [walk(v, depth + 1) for v in o]
        if isinstance(o, np.generic):
            return o.item()
        return o

    return walk(obj, 0)


def _walk_module_state(state: dict, prefix: str, out: dict) -> None:
    """Collect the tensors of a module tree, like ``nn.Module.state_dict``, iteratively.

    Bounded by :data:`MAX_DEPTH` levels and :data:`MAX_ENTRIES` entries; a module that
    contains itself is a :class:`CorruptPickleError`."""
    todo: list[tuple[dict, str, int, frozenset[int]]] = [(state, prefix, 0, frozenset())]
    entries = 0
    while todo:
        st, pre, depth, above = todo.pop()
        if depth > MAX_DEPTH or id(st) in above:
            raise CorruptPickleError(
                f"module {pre.rstrip('.')!r:.80} contains itself or nests too deep"
            )
        above = above | {id(st)}
        groups = [st.get(key) or {} for key in ("_parameters", "_buffers", "_modules")]
        skip = st.get("_non_persistent_buffers_set", ()) or ()
        if not all(isinstance(g, dict) for g in groups) or not isinstance(skip, (set, list, tuple)):
            raise CorruptPickleError(f"module {pre.rstrip('.')!r:.80} has malformed state")
        params, buffers, modules = groups
        entries += len(params) + len(buffers) + len(modules)
        if entries > MAX_ENTRIES:
            raise CorruptPickleError(f"module tree has over {MAX_ENTRIES} entries")
        skip = {k for k in skip if isinstance(k, str)}
        for kind, group in (("_parameters", params), ("_buffers", buffers)):
            for name, value in group.items():
                if value is None or (kind == "_buffers" and name in skip):
                    continue
                if not isinstance(name, str) or not isinstance(value, torch.Tensor):
                    raise CorruptPickleError(f"{pre}{name!s:.80} is not a named tensor")
                out[pre + name] = value
        subs = []
        for name, sub in modules.items():
            if sub is None:
                continue
            sub_state = sub.state if isinstance(sub, (PersistentRecord, ModuleRecord)) else None
            if not isinstance(name, str) or not isinstance(sub_state, dict):
                raise CorruptPickleError(f"submodule {pre}{name!s:.80} is not a module record")
            subs.append((sub_state, f"{pre}{name}.", depth + 1, above))
        todo.extend(reversed(subs))  # depth first, in order, like nn.Module.state_dict


# ---------------------------------------------------------------------------------------------
# Whitelisted constructors


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class" or "state" not in meta:
        raise CorruptPickleError("persistent object without class metadata")
    state = meta["state"]
    if not isinstance(state, dict):
        raise CorruptPickleError("persistent object state is not a dict")
    return PersistentRecord(
        class_name=str(meta.get("class_name", "")),
        version=int(meta.get("version", 0)),
        module_src=str(meta.get("module_src", "")),
        state=state,
    )


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> torch.dtype:
        return _STORAGE_DTYPES[self.name]


def _rebuild_tensor_v2(
    storage: torch.Tensor,
    storage_offset: int,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor) or storage.ndim != 1:
        raise CorruptPickleError("tensor storage is not a flat buffer")
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    offset = int(storage_offset)
    if len(size) != len(stride) or offset < 0 or any(v < 0 for v in size + stride):
        raise CorruptPickleError("tensor has an invalid shape or stride")
    if all(size):
        extent = offset + 1 + sum((s - 1) * st for s, st in zip(size, stride, strict=True))
        if extent > storage.numel():
            raise CorruptPickleError("tensor view lies outside its storage")
    return torch.as_strided(storage, size, stride, offset).clone()


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    if not isinstance(data, torch.Tensor):
        raise CorruptPickleError("parameter data is not a tensor")
    return data


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or not isinstance(data, bytes):
        raise UnsafePickleError("numpy scalar of a non-numeric dtype is not allowed")
    if len(data) != dtype.itemsize:
        raise CorruptPickleError("numpy scalar has the wrong byte length")
    return np.frombuffer(data, dtype=dtype)[0]


def _numpy_reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise UnsafePickleError("only plain numpy arrays are allowed")
    # numpy pickles ``_reconstruct(ndarray, (0,), b'b')`` and sets the real shape and data in
    # the BUILD step (from bytes in the file); a large shape here would allocate from nothing.
    dims = shape if isinstance(shape, (tuple, list)) else (shape,)
    if not all(isinstance(d, int) and d >= 0 for d in dims) or math.prod(dims) > MAX_NUMPY_PREALLOC:
        raise CorruptPickleError("numpy array reconstructed with an unexpected shape")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is only allowed for latin1 text")
    return text.encode("latin1")


def _load_from_bytes(blob: Any) -> torch.Tensor:
    if not isinstance(blob, (bytes, bytearray)):
        raise CorruptPickleError("storage blob is not bytes")
    return read_legacy_storage(bytes(blob))


class _DtypeFactory:
    """``numpy.dtype`` callable that also accepts the (align, copy) pickle arguments."""

    def __call__(self, obj: Any, align: Any = False, copy: Any = False) -> np.dtype:
        if not isinstance(obj, str):
            raise UnsafePickleError("numpy dtype from a non-string description")
        try:
            dt = np.dtype(obj)
        except TypeError:
            raise UnsafePickleError(f"numpy dtype {obj!r} is not allowed") from None
        if dt.kind not in "biufc":
            raise UnsafePickleError(f"numpy dtype {obj!r} is not numeric")
        # A fresh copy: the pickle's BUILD step then sets the state of this copy, never of
        # numpy's shared builtin descriptors.
        return np.dtype(obj, align=bool(align), copy=True)


def _newobj_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    plain_records = (AttrDict, TFNetworkRecord, ModuleRecord, OrderedDict)
    if not (isinstance(cls, type) and issubclass(cls, plain_records)) or base is not object:
        raise UnsafePickleError("copyreg._reconstructor is only allowed for plain records")
    return cls()


ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("numpy", "dtype"): _DtypeFactory(),
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("dnnlib.util", "EasyDict"): AttrDict,
    ("dnnlib.EasyDict", "EasyDict"): AttrDict,
    ("dnnlib.tflib.network", "Network"): TFNetworkRecord,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _newobj_reconstructor,
    ("copy_reg", "_reconstructor"): _newobj_reconstructor,
}
for _name in _STORAGE_DTYPES:
    ALLOWED[("torch", _name)] = _StorageType(_name)

# Nested plain torch modules inside persistent records (e.g. torch.nn.ModuleList) are read as data.
_TORCH_MODULE_CLASSES = {
    "Module",
    "ModuleList",
    "ModuleDict",
    "Sequential",
    "Identity",
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only whitelisted globals; everything else is refused.

    ``max_storage_bytes`` (the file size, for :func:`restricted_load`) bounds the bytes of all
    tensor storages read: one memoised blob rebuilt many times cannot multiply memory. Tensors
    cut from storages may together hold at most twice those bytes plus
    :data:`TENSOR_SLACK_BYTES` (views of one storage are copied)."""

    def __init__(self, file: BinaryIO, max_storage_bytes: int | None = None) -> None:
        super().__init__(file)
        self.max_storage_bytes = max_storage_bytes
        self.storage_bytes = 0
        self.tensor_bytes = 0

    def _load_from_bytes(self, blob: Any) -> torch.Tensor:
        storage = _load_from_bytes(blob)
        self.storage_bytes += storage.numel() * storage.element_size()
        if self.max_storage_bytes is not None and self.storage_bytes > self.max_storage_bytes:
            raise CorruptPickleError(
                "tensor storages add up to more bytes than the file holds (repeated storages)"
            )
        return storage

    def _rebuild_tensor_v2(self, storage: Any, *args: Any) -> torch.Tensor:
        if self.max_storage_bytes is not None and isinstance(storage, torch.Tensor):
            size = args[1] if len(args) > 1 else ()
            try:
                numel = math.prod(int(s) for s in size)
            except (TypeError, ValueError):
                raise CorruptPickleError("tensor has an invalid shape") from None
            self.tensor_bytes += numel * storage.element_size()
            if self.tensor_bytes > 2 * self.storage_bytes + TENSOR_SLACK_BYTES:
                raise CorruptPickleError(
                    "tensors add up to more bytes than their storages hold (repeated views)"
                )
        return _rebuild_tensor_v2(storage, *args)

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key == ("torch.storage", "_load_from_bytes"):
            return self._load_from_bytes  # ALLOWED's function, with the byte budget
        if key == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor_v2
        if key in ALLOWED:
            return ALLOWED[key]
        if module.startswith("torch.nn.modules.") and name in _TORCH_MODULE_CLASSES:
            return _module_record_class(name)
        raise UnsafePickleError(
            f"refusing to load global '{module}.{name}': not on the whitelist of network pickles"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("persistent ids are only allowed inside storage blobs")


def _module_record_class(name: str) -> type:
    return type(
        name, (ModuleRecord,), {"__init__": lambda self, *a: ModuleRecord.__init__(self, name)}
    )


class _StorageUnpickler(RestrictedUnpickler):
    """Reads the small pickles inside a legacy ``torch.save`` storage blob."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file, max_storage_bytes=len(file.getbuffer()))
        self.storage_refs: dict[str, tuple[torch.dtype, int]] = {}
        self.placeholders: dict[str, _StoragePlaceholder] = {}

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise CorruptPickleError(f"unexpected persistent id in storage blob: {pid!r:.80}")
        stype, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        if not isinstance(stype, _StorageType):
            raise UnsafePickleError("storage of an unknown type")
        self.storage_refs[key] = (stype.dtype, numel)
        ph = self.placeholders.setdefault(key, _StoragePlaceholder(key))
        return ph


@dataclass
class _StoragePlaceholder:
    key: str


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


def read_legacy_storage(blob: bytes) -> torch.Tensor:
    """Read a storage saved with the legacy (non-zip) ``torch.save`` format as a 1-D tensor.

    Layout: pickles of (magic, protocol 1001, sys_info, the object with a persistent storage id,
    the list of storage keys), then per key an int64 element count and the raw little-endian
    data.
    """
    f = io.BytesIO(blob)
    up = _StorageUnpickler(f)
    try:
        magic = up.load()
        if magic != LEGACY_MAGIC:
            raise CorruptPickleError("storage blob has a wrong magic number")
        proto = up.load()
        if proto != LEGACY_PROTOCOL:
            raise CorruptPickleError(f"storage blob has unsupported protocol {proto!r}")
        up.load()  # sys_info: byte order and type sizes
        obj = up.load()
        keys = up.load()
    except (EOFError, struct.error, ValueError, IndexError, TypeError) as e:
        raise CorruptPickleError(f"storage blob is truncated or malformed ({e})") from None
    if not isinstance(obj, _StoragePlaceholder) or not isinstance(keys, list) or len(keys) != 1:
        raise CorruptPickleError("storage blob does not hold exactly one storage")
    dtype, numel = up.storage_refs[obj.key]
    head = f.read(8)
    if len(head) != 8:
        raise CorruptPickleError("storage blob is truncated")
    (count,) = struct.unpack("<q", head)
    if count != numel:
        raise CorruptPickleError("storage blob element count mismatch")
    itemsize = torch.empty([], dtype=dtype).element_size()
    data = f.read(count * itemsize)
    if len(data) != count * itemsize:
        raise CorruptPickleError("storage blob is truncated")
    return (
        torch.frombuffer(bytearray(data), dtype=dtype) if count else torch.empty([0], dtype=dtype)
    )


def restricted_load(file: BinaryIO) -> Any:
    """Unpickle ``file`` with :class:`RestrictedUnpickler`, turning low-level errors into
    :class:`CorruptPickleError`. Storages may add up to at most the bytes left in ``file``."""
    start = file.tell()
    size = file.seek(0, io.SEEK_END) - start
    file.seek(start)
    try:
        return RestrictedUnpickler(file, max_storage_bytes=size).load()
    except pickle.UnpicklingError:
        raise
    except (
        EOFError,
        struct.error,
        ValueError,
        IndexError,
        KeyError,
        TypeError,
        AttributeError,
        MemoryError,
        RecursionError,
        UnicodeDecodeError,
    ) as e:
        raise CorruptPickleError(
            f"truncated or malformed pickle ({type(e).__name__}: {e})"
        ) from None
