"""Whitelisted but hostile checkpoints (issue 16, defect 5): nothing in them executes, but they
describe a lot of work (memoised shared references, self references, 200 000-deep nesting),
wrong types or absurd sizes. Each must give a one-line :class:`CheckpointError` naming the file,
quickly and without a large allocation; never a traceback.

The files are written here: NVIDIA-like snapshots with :func:`write_snapshot` (protocol 2, so
opcodes can be spliced into the bytes), storage tricks with ``__reduce__`` records naming the
whitelisted globals, forged ``toon`` metadata with ``safetensors``, rosinality ``.pt`` files
with ``torch.save``.
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from teacher import CheckpointError
from teacher.io import read_networks
from teacher.pickle_reader import MAX_VALUES, CorruptPickleError, TFNetworkRecord
from teacher.spec import KIND_GENERATOR, check_arch
from tests.conftest import REPO, tiny_generator
from tests.teacher.test_io import _nvidia_g_kwargs, write_snapshot

SENTINEL = "HOSTILE_VALUE_GOES_HERE"


def _shared(levels: int) -> list:
    """``[x, x]`` nested ``levels`` times: 2**levels items when expanded, tiny when pickled."""
    x: list = []
    for _ in range(levels):
        x = [x, x]
    return x


def _self_referencing() -> list:
    x: list = []
    x.append(x)
    return x


def _snapshot(path: Path, kwargs=None, **kw) -> Path:
    G = tiny_generator()
    kwargs = _nvidia_g_kwargs(G) if kwargs is None else kwargs
    write_snapshot(path, {"G_ema": ("Generator", kwargs, G)}, protocol=2, **kw)
    return path


def _with_kwarg(key: str, value) -> dict:
    kwargs = _nvidia_g_kwargs(tiny_generator())
    kwargs[key] = value
    return kwargs


def _deep_snapshot(path: Path, depth: int = 200_000) -> Path:
    """``z_dim`` = a list nested ``depth`` deep, written as opcodes: MARK * depth, LIST * depth
    (pickle.dumps itself would hit the recursion limit)."""
    _snapshot(path, _with_kwarg("z_dim", SENTINEL))
    data = path.read_bytes()
    op = b"X" + len(SENTINEL).to_bytes(4, "little") + SENTINEL.encode()  # BINUNICODE
    assert data.count(op) == 1
    path.write_bytes(data.replace(op, b"(" * depth + b"l" * depth))
    return path


class _Call:
    """Pickles as a call of ``fn(*args)`` (``fn`` must be a whitelisted global)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _legacy_storage_blob(n: int) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated; NVIDIA pickles use it
        torch.save(torch.zeros(n).storage(), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _storage_pickle(path: Path, how: str) -> Path:
    from torch._utils import _rebuild_tensor_v2
    from torch.storage import _load_from_bytes

    if how == "repeated_storages":  # one memoised 1 MiB blob, turned into 200 storages
        blob = _legacy_storage_blob(1 << 18)
        obj = [_Call(_load_from_bytes, blob) for _ in range(200)]
    elif how == "repeated_views":  # one 1 MiB storage, cut into 200 full tensors
        storage = _Call(_load_from_bytes, _legacy_storage_blob(1 << 18))
        obj = [_Call(_rebuild_tensor_v2, storage, 0, (1 << 18,), (1,)) for _ in range(200)]
    else:  # "broadcast": one value seen as a 2**15 x 2**15 tensor (4 GiB when copied)
        storage = _Call(_load_from_bytes, _legacy_storage_blob(1))
        obj = {"G_ema": _Call(_rebuild_tensor_v2, storage, 0, (1 << 15, 1 << 15), (0, 0))}
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


def _numpy_prealloc(path: Path) -> Path:
    from numpy.core.multiarray import _reconstruct

    path.write_bytes(pickle.dumps(_Call(_reconstruct, np.ndarray, (1 << 40,), b"b"), protocol=4))
    return path


def _safetensors(path: Path, info) -> Path:
    save_file({"w": torch.zeros(4)}, str(path), metadata={"toon": json.dumps(info)})
    return path


def _toon(arch, kind: str = KIND_GENERATOR, **extra) -> dict:
    return {"format_version": 1, "kind": kind, "arch": arch, "source": {}, **extra}


_G_ARCH = dict(tiny_generator().arch)


def _rosinality_broadcast(path: Path, channels: int = 4096) -> Path:
    """A rosinality checkpoint whose conv weights are stride-0 views of one value: shapes claim
    4096 channels (0.5 G weights), the file stores a few values."""

    def big(*shape: int) -> torch.Tensor:
        return torch.zeros(1).expand(*shape)

    C = channels
    g = {
        "style.1.weight": torch.zeros(8, 8),
        "input.input": big(1, C, 4, 4),
        "conv1.conv.weight": big(1, C, C, 3, 3),
        "to_rgb1.conv.weight": big(1, 3, C, 1, 1),
        "convs.0.conv.weight": big(1, C, C, 3, 3),
        "convs.1.conv.weight": big(1, C, C, 3, 3),
        "to_rgbs.0.conv.weight": big(1, 3, C, 1, 1),
    }
    torch.save({"g_ema": g}, path)
    return path


# name -> (writer(tmp path) -> file, part of the expected message)
CASES = {
    "shared_refs_40_levels": (
        lambda p: _snapshot(p, _with_kwarg("extra", _shared(40))),
        "nest deeper than",
    ),
    "shared_refs_20_levels": (
        lambda p: _snapshot(p, _with_kwarg("extra", _shared(20))),
        f"more than {MAX_VALUES} values",
    ),
    "self_reference": (
        lambda p: _snapshot(p, _with_kwarg("mapping_kwargs", {"num_layers": _self_referencing()})),
        "refer to themselves",
    ),
    "nested_200000_deep": (_deep_snapshot, "nest deeper than"),
    "init_kwargs_a_list": (lambda p: _snapshot(p, [1, 2]), "_init_kwargs is a list"),
    "init_args_an_int": (
        lambda p: _snapshot(p, state_overrides={"_init_args": 5}),
        "_init_args is an int",
    ),
    "mapping_kwargs_a_list": (
        lambda p: _snapshot(p, _with_kwarg("mapping_kwargs", [1])),
        "mapping_kwargs is a list, expected a dict",
    ),
    "resolution_2_40": (
        lambda p: _snapshot(p, _with_kwarg("img_resolution", 2**40)),
        "img_resolution is 1099511627776, expected a power of two in [4, 4096]",
    ),
    "resolution_a_string": (
        lambda p: _snapshot(p, _with_kwarg("img_resolution", "16")),
        "img_resolution is '16'",
    ),
    "z_dim_a_float": (lambda p: _snapshot(p, _with_kwarg("z_dim", 32.5)), "z_dim is 32.5"),
    "channel_base_below_resolution": (
        lambda p: _snapshot(p, _with_kwarg("synthesis_kwargs", {"channel_base": 8})),
        "gives no channels",
    ),
    "channels_in_range_but_not_stored": (
        lambda p: _snapshot(
            p, _with_kwarg("synthesis_kwargs", {"channel_base": 1 << 20, "channel_max": 4096})
        ),
        "needs at least",
    ),
    "module_contains_itself": (
        lambda p: _snapshot(p, state_overrides={"_modules": {"loop": _looped_module()}}),
        "contains itself",
    ),
    "module_fan_out": (
        lambda p: _snapshot(p, state_overrides={"_modules": {"m": _fanned_module(20)}}),
        "entries",
    ),
    "repeated_storages": (
        lambda p: _storage_pickle(p, "repeated_storages"),
        "more bytes than the file holds",
    ),
    "repeated_views": (
        lambda p: _storage_pickle(p, "repeated_views"),
        "more bytes than their storages",
    ),
    "broadcast_view": (lambda p: _storage_pickle(p, "broadcast"), "more bytes than their storages"),
    "numpy_prealloc": (_numpy_prealloc, "unexpected shape"),
    "toon_not_an_object": (lambda p: _safetensors(p, [1, 2]), "not a JSON object"),
    "toon_arch_a_list": (lambda p: _safetensors(p, _toon([1])), "arch is not a JSON object"),
    "toon_source_a_list": (
        lambda p: _safetensors(p, _toon(_G_ARCH, source=[1])),
        "source is not a JSON object",
    ),
    "toon_resolution_2_40": (
        lambda p: _safetensors(p, _toon({**_G_ARCH, "img_resolution": 2**40})),
        "img_resolution is 1099511627776",
    ),
    "toon_channel_max_a_string": (
        lambda p: _safetensors(p, _toon({**_G_ARCH, "channel_max": "512"})),
        "channel_max is '512'",
    ),
    "toon_100gb_arch": (  # every field in range; 4096 px with 8192 channels
        lambda p: _safetensors(
            p,
            _toon(
                {**_G_ARCH, "img_resolution": 4096, "channel_base": 1 << 26, "channel_max": 8192}
            ),
        ),
        "needs at least",
    ),
    "toon_snapshot_unknown_net": (
        lambda p: _safetensors(p, _toon({"X": _G_ARCH}, kind="teacher.snapshot")),
        "unknown network 'X'",
    ),
    "toon_snapshot_arch_a_list": (
        lambda p: _safetensors(p, _toon({"G_ema": [1]}, kind="teacher.snapshot")),
        "generator arch is a list",
    ),
    "toon_deep_json": (
        lambda p: _safetensors_raw(p, "[" * 100_000 + "]" * 100_000),
        "not valid JSON",
    ),
    "rosinality_broadcast": (_rosinality_broadcast, "needs at least"),
}


def _looped_module() -> torch.nn.Module:
    m = torch.nn.Module()
    m.add_module("again", m)
    return m


def _fanned_module(levels: int) -> torch.nn.Module:
    m = torch.nn.Module()
    for _ in range(levels):
        parent = torch.nn.Module()
        parent.add_module("a", m)
        parent.add_module("b", m)
        m = parent
    return m


def _safetensors_raw(path: Path, toon: str) -> Path:
    save_file({"w": torch.zeros(4)}, str(path), metadata={"toon": toon})
    return path


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file_gives_one_line_error(tmp_path: Path, name: str) -> None:
    write, expect = CASES[name]
    path = write(tmp_path / f"{name}.bin")
    with pytest.raises(CheckpointError) as e:
        read_networks(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg and len(msg) < 400, msg
    assert expect in msg, msg


def test_hostile_files_are_cheap_in_a_fresh_process(tmp_path: Path) -> None:
    """All cases read in one fresh interpreter under a time limit: none hangs, none leaves a
    traceback, and the peak memory stays far below what the files claim (GBs)."""
    paths = [str(write(tmp_path / f"{name}.bin")) for name, (write, _) in CASES.items()]
    code = (
        "import resource, sys\n"
        "import torch  # baseline memory\n"
        "from teacher import CheckpointError\n"
        "from teacher.io import read_networks\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        read_networks(p)\n"
        "        print('LOADED', p)\n"
        "    except CheckpointError:\n"
        "        pass\n"
        "print('grew_mb', (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, *paths],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "LOADED" not in r.stdout, r.stdout
    grew = int(r.stdout.split("grew_mb")[1])
    assert grew < 600, f"peak memory grew by {grew} MB"


def test_tf_components_that_contain_themselves() -> None:
    rec = TFNetworkRecord()
    rec.components = {"loop": rec}
    with pytest.raises(CorruptPickleError, match="repeat or nest too deep"):
        rec.all_variables()


@pytest.mark.parametrize(
    "field,value,expect",
    [
        ("mapping_layers", 10**6, "mapping_layers is 1000000, expected an integer in [1, 64]"),
        ("resample_filter", [0, 0], "non-zero sum"),
        ("resample_filter", "abc", "filter taps"),
        ("use_noise", 1, "use_noise is 1, expected true or false"),
        ("conv_clamp", float("inf"), "conv_clamp is inf"),
        ("architecture", ["skip"], "architecture is a list"),
        ("no_such_field", 1, "unsupported generator argument 'no_such_field'"),
    ],
)
def test_check_arch_names_the_field(field, value, expect) -> None:
    with pytest.raises(CheckpointError) as e:
        check_arch(KIND_GENERATOR, {**_G_ARCH, field: value})
    assert expect in str(e.value)


def test_check_arch_accepts_our_own_networks() -> None:
    assert check_arch(KIND_GENERATOR, _G_ARCH) == _G_ARCH
