"""Checkpoint reading: safety of the unpickler, clear errors, our safetensors format."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from teacher import CheckpointError, load_discriminator, load_generator, save_network
from teacher.io import read_model_info, read_networks
from tests.conftest import randomize_, shared_file, tiny_discriminator, tiny_generator

# ---------------------------------------------------------------------------------------------
# Writers for NVIDIA-style persistent pickles (used to build test files)


def _persistent_module() -> types.ModuleType:
    mod = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # never called by the reader under test
        raise AssertionError("the reader must not call the pickled reconstructor")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    return mod


class _Persistent:
    def __init__(self, meta, fn):
        self.meta, self.fn = meta, fn

    def __reduce__(self):
        return (self.fn, (self.meta,))


def write_snapshot(
    path: Path,
    nets: dict,
    module_src: str = "# src\n",
    protocol: int = 4,
    state_overrides: dict | None = None,
) -> None:
    """Write ``{key: (class_name, init_kwargs, nn.Module)}`` the way NVIDIA snapshots are laid
    out: persistent records whose state holds ``_parameters``/``_buffers`` of flat tensors.
    ``state_overrides`` replace entries of every record's state (``_modules``, ``_init_args``);
    protocol 2 writes no frames, so tests can splice opcodes into the bytes."""
    pkg = types.ModuleType("torch_utils")
    mod = _persistent_module()
    sys.modules["torch_utils"], sys.modules["torch_utils.persistence"] = pkg, mod
    try:
        data = {"training_set_kwargs": None}
        for key, (class_name, kwargs, net) in nets.items():
            params = {k: v.detach().clone() for k, v in net.state_dict().items()}
            meta = {
                "type": "class",
                "version": 6,
                "module_src": module_src,
                "class_name": class_name,
                "state": {
                    "_parameters": params,
                    "_buffers": {},
                    "_non_persistent_buffers_set": set(),
                    "_modules": {},
                    "training": False,
                    "_init_args": (),
                    "_init_kwargs": kwargs,
                    **(state_overrides or {}),
                },
            }
            data[key] = _Persistent(meta, mod._reconstruct_persistent_obj)
        data.setdefault("augment_pipe", None)
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=protocol)
    finally:
        del sys.modules["torch_utils"], sys.modules["torch_utils.persistence"]


def _nvidia_g_kwargs(G) -> dict:
    a = G.arch
    return {
        "z_dim": a["z_dim"],
        "c_dim": a["c_dim"],
        "w_dim": a["w_dim"],
        "img_resolution": a["img_resolution"],
        "img_channels": 3,
        "mapping_kwargs": {"num_layers": a["mapping_layers"]},
        "synthesis_kwargs": {"channel_base": a["channel_base"], "channel_max": a["channel_max"]},
    }


# ---------------------------------------------------------------------------------------------
# Malicious pickles


class _Evil:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _evil_payloads(marker: Path):
    cmd = f"touch {marker}"
    return {
        "os.system": _Evil(os.system, (cmd,)),
        "builtins.eval": _Evil(eval, (f"open({str(marker)!r}, 'w')",)),
        "builtins.exec": _Evil(exec, (f"open({str(marker)!r}, 'w')",)),
        "subprocess.Popen": _Evil(subprocess.Popen, (["touch", str(marker)],)),
        "builtins.getattr": _Evil(getattr, ("text", "upper")),
        "posix.system via os": _Evil(os.popen, (cmd,)),
    }


@pytest.mark.parametrize("name", list(_evil_payloads(Path("/x"))))
@pytest.mark.parametrize("where", ["top", "inside_snapshot"])
def test_malicious_globals_are_refused_and_nothing_runs(tmp_path, name, where):
    marker = tmp_path / "pwned"
    payload = _evil_payloads(marker)[name]
    obj = payload if where == "top" else {"G_ema": payload, "D": None}
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(CheckpointError, match="unsafe pickle refused") as e:
        load_generator(path)
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_malicious_global_inside_a_storage_blob_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    inner = pickle.dumps(_Evil(os.system, (f"touch {marker}",)), protocol=2)
    path = tmp_path / "evil_storage.pkl"
    path.write_bytes(pickle.dumps(_Evil(torch.storage._load_from_bytes, (inner,)), protocol=4))
    with pytest.raises(CheckpointError, match="unsafe pickle refused"):
        load_generator(path)
    assert not marker.exists()


def test_embedded_module_source_is_never_executed(tmp_path):
    marker = tmp_path / "ran"
    G = randomize_(tiny_generator())
    src = f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit('module_src executed')\n"
    path = tmp_path / "snap.pkl"
    write_snapshot(path, {"G_ema": ("Generator", _nvidia_g_kwargs(G), G)}, module_src=src)
    G2 = load_generator(path)
    assert not marker.exists()
    ws = torch.randn(2, G.num_ws, G.w_dim)
    with torch.no_grad():
        assert torch.equal(
            G.synthesis(ws, noise_mode="const"), G2.synthesis(ws, noise_mode="const")
        )


def test_reader_does_not_import_foreign_modules(tmp_path):
    """Loading a real snapshot in a fresh interpreter imports neither NVIDIA's packages nor
    anything named in the pickle."""
    pkl = shared_file("fixtures", "tiny32.pkl")
    code = (
        "import sys; from teacher import load_generator; load_generator(sys.argv[1]);"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('dnnlib', 'torch_utils', 'training',"
        " 'legacy')]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(pkl)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------
# Corrupt and wrong files


@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.5, 0.9, 0.999])
def test_truncated_snapshot_gives_one_line_error(tmp_path, fraction):
    data = shared_file("fixtures", "tiny32.pkl").read_bytes()
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError) as e:
        load_generator(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    assert "corrupt" in msg or "truncated" in msg


def test_corrupted_bytes_give_clear_error(tmp_path):
    data = bytearray(shared_file("fixtures", "tiny32.pkl").read_bytes())
    rng = np.random.RandomState(0)
    for i in rng.randint(200, 4000, size=40):
        data[i] ^= 0xFF
    path = tmp_path / "flipped.pkl"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        load_generator(path)
    assert "\n" not in str(e.value)


def test_discriminator_only_files(tmp_path):
    D = randomize_(tiny_discriminator())
    kwargs = {
        "c_dim": 0,
        "img_resolution": 16,
        "img_channels": 3,
        "channel_base": 512,
        "channel_max": 32,
        "epilogue_kwargs": {"mbstd_group_size": 2},
    }
    pkl = tmp_path / "d_only.pkl"
    write_snapshot(pkl, {"D": ("Discriminator", kwargs, D)})
    with pytest.raises(CheckpointError, match=r"holds no generator 'G_ema' \(it holds D\)"):
        load_generator(pkl)
    D2 = load_discriminator(pkl)
    img = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(D(img), D2(img))
    st = save_network(D2, tmp_path / "d.safetensors")
    with pytest.raises(CheckpointError, match="holds no generator"):
        load_generator(st)


@pytest.mark.parametrize(
    "content,expect",
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not a network checkpoint"),
        (b"hello, this is a text file\n", "not a network checkpoint"),
        (b"", "not a network checkpoint"),
        (pickle.dumps([1, 2, 3], protocol=4), "not a StyleGAN2 snapshot"),
        (pickle.dumps({"G_ema": 5}, protocol=4), "not a StyleGAN2 snapshot"),
    ],
)
def test_non_checkpoint_files(tmp_path, content, expect):
    path = tmp_path / "thing.pkl"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expect):
        load_generator(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_generator(tmp_path / "nope.pkl")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_generator(tmp_path)


def test_unknown_constructor_argument_is_refused(tmp_path):
    G = tiny_generator()
    kwargs = _nvidia_g_kwargs(G)
    kwargs["synthesis_kwargs"]["magic_flag"] = True
    path = tmp_path / "odd.pkl"
    write_snapshot(path, {"G_ema": ("Generator", kwargs, G)})
    with pytest.raises(
        CheckpointError, match="unsupported generator synthesis argument 'magic_flag'"
    ):
        load_generator(path)


def test_state_that_does_not_match_arch_is_refused(tmp_path):
    G = tiny_generator()
    kwargs = _nvidia_g_kwargs(G)
    kwargs["synthesis_kwargs"]["channel_max"] = 16  # claims fewer channels than stored
    path = tmp_path / "mismatch.pkl"
    write_snapshot(path, {"G_ema": ("Generator", kwargs, G)})
    with pytest.raises(CheckpointError, match="shape"):
        load_generator(path)


# ---------------------------------------------------------------------------------------------
# Our format


def test_safetensors_metadata_and_round_trip(tmp_path):
    G = randomize_(tiny_generator(c_dim=2, architecture="resnet", conv_clamp=256))
    G.source = {"file": "x.pkl", "sha256": "ab" * 32}
    path = save_network(G, tmp_path / "g.safetensors")
    info = read_model_info(path)
    net = info["networks"]["G_ema"]
    assert info["format"] == "safetensors"
    assert net["kind"] == "teacher.generator" and net["arch"] == G.arch
    assert net["source"] == {"file": "x.pkl", "sha256": "ab" * 32}
    G2 = load_generator(path)
    for (k, a), (k2, b) in zip(G.state_dict().items(), G2.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_safetensors_without_toon_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="no 'toon' metadata"):
        load_generator(path)
    save_file(
        {"w": torch.zeros(2)}, str(path), metadata={"toon": json.dumps({"format_version": 99})}
    )
    with pytest.raises(CheckpointError, match="unsupported model format version 99"):
        load_generator(path)


def test_snapshot_lists_all_networks():
    specs = read_networks(shared_file("fixtures", "tiny32.pkl"))
    assert set(specs) == {"G", "G_ema", "D"}
    # G and G_ema differ after training (the fixture perturbs G), buffers are shared.
    g, g_ema = specs["G"].state, specs["G_ema"].state
    assert not torch.equal(g["synthesis.b4.conv1.weight"], g_ema["synthesis.b4.conv1.weight"])
    assert torch.equal(g["mapping.w_avg"], g_ema["mapping.w_avg"])


def test_snapshot_with_augment_pipe_and_conditional_networks(tmp_path):
    """A conditional snapshot that also carries an augment pipe (as ADA runs write them)."""
    G = randomize_(tiny_generator(c_dim=4))
    D = randomize_(tiny_discriminator(c_dim=4))
    pipe = torch.nn.Module()
    pipe.register_buffer("p", torch.tensor(0.3))
    pipe.register_buffer("Hz_geom", torch.randn(12))
    d_kwargs = {
        "c_dim": 4,
        "img_resolution": 16,
        "img_channels": 3,
        "channel_base": 512,
        "channel_max": 32,
        "block_kwargs": {},
        "mapping_kwargs": {},
        "epilogue_kwargs": {"mbstd_group_size": 2},
    }
    path = tmp_path / "cond.pkl"
    write_snapshot(
        path,
        {
            "G_ema": ("Generator", _nvidia_g_kwargs(G), G),
            "D": ("Discriminator", d_kwargs, D),
            "augment_pipe": ("AugmentPipe", {"xflip": 1, "scale": 1, "noise": 1}, pipe),
        },
    )
    assert set(read_networks(path)) == {"G_ema", "D"}
    G2, D2 = load_generator(path), load_discriminator(path)
    assert G2.c_dim == 4 and D2.c_dim == 4
    z, c = torch.randn(4, G.z_dim), torch.eye(4)
    with torch.no_grad():
        img = G(z, c, noise_mode="const")
        assert torch.equal(img, G2(z, c, noise_mode="const"))
        assert torch.equal(D(img, c), D2(img, c))
