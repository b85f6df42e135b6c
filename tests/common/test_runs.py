"""common.runs: device choice, run directories, resume state, naming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.runs import (
    RESUME_FILE,
    TrainError,
    all_reduce_,
    load_resume_state,
    pick_device,
    prepare_run_dir,
    save_resume_state,
    snapshot_tag,
)


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            pick_device("cuda")


def test_run_dir_resumes_only_the_same_config(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = {"lr": 0.002, "kimg": 10}
    assert prepare_run_dir(out, json.dumps(cfg), free={"kimg"}) is False
    assert json.loads((out / "config.json").read_text()) == cfg
    (out / RESUME_FILE).write_bytes(b"")
    # a longer run of the same config resumes
    assert prepare_run_dir(out, json.dumps({**cfg, "kimg": 20}), free={"kimg"}) is True
    with pytest.raises(TrainError, match=r"different config \(lr\)"):
        prepare_run_dir(out, json.dumps({**cfg, "lr": 0.01}), free={"kimg"})
    assert json.loads((out / "config.json").read_text())["kimg"] == 20


def test_resume_state_round_trip(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = tmp_path / RESUME_FILE
    torch.manual_seed(123)
    save_resume_state(
        path, {"step": 7, "lr": 0.5}, {"net": net, "opt": opt}, {"extra": torch.ones(2)}
    )
    expected_draw = torch.rand(3)

    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(net2.parameters(), lr=0.1)
    torch.manual_seed(999)
    blob = load_resume_state(path, {"net": net2, "opt": opt2})
    assert blob["counters"] == {"step": 7, "lr": 0.5}
    assert isinstance(blob["counters"]["step"], int)
    assert torch.equal(blob["extra"], torch.ones(2))
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where it was saved


def test_resume_state_optional_and_mismatch(tmp_path: Path) -> None:
    path = tmp_path / RESUME_FILE
    save_resume_state(path, {"step": 1}, {"net": torch.nn.Linear(3, 2)}, {"scaler": {}})
    load_resume_state(path, {"net": torch.nn.Linear(3, 2), "scaler": object()}, optional={"scaler"})
    with pytest.raises(TrainError, match=f"{RESUME_FILE}: cannot resume"):
        load_resume_state(path, {"net": torch.nn.Linear(4, 2)})
    path.write_bytes(b"not a torch file")
    with pytest.raises(TrainError, match="delete it to restart the run"):
        load_resume_state(path, {"net": torch.nn.Linear(3, 2)})


def test_snapshot_tag() -> None:
    assert snapshot_tag(40_000) == "000040"
    assert snapshot_tag(64) == "000000.064"
    assert snapshot_tag(1_234_500) == "001234.500"


def test_all_reduce_single_process_is_identity() -> None:
    t = torch.arange(4.0)
    all_reduce_([t], world=1, mean=True)
    assert torch.equal(t, torch.arange(4.0))


def test_kimg_bar_lands_exactly_on_its_total(capsys: pytest.CaptureFixture[str]) -> None:
    """A 1 kimg run in batches of 64 ends at 1024 images: the bar must stop at 1.000 kimg, not
    overshoot (tqdm's "clamping frac" warning and a negative time remaining)."""
    import warnings

    from common.runs import kimg_bar

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bar = kimg_bar(1000, 128, "test")  # resumed at 128 images
        nimg = 128
        while nimg < 1000:
            nimg += 64
            bar.update_to(nimg)
            assert bar.n == min(nimg, 1000)
        bar.update_to(nimg - 64)  # never backwards
        assert bar.n == 1000
        bar.close()
    assert not [w for w in caught if "clamping" in str(w.message)]
    err = capsys.readouterr().err
    assert "1.000/1.000 kimg" in err and "<-" not in err
