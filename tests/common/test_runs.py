"""common.runs: device choice, run directories, resume state, naming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common import runs
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


def test_pass_batch_choice_follows_the_memory_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    """paper256's estimate (3.5 GiB fixed, 0.6 GiB per image) and batch 64 in minibatch-std
    groups of 8: the pass grows with the memory, never past what fits in 80% of it."""
    from common.runs import GiB, available_memory, choose_pass_batch, pass_batches

    assert pass_batches(64, 8) == [64, 32, 16, 8]
    assert pass_batches(4, 8) == [4, 2, 1]  # smaller than a group: the group shrinks to it
    assert pass_batches(6, 1) == [6, 3, 2, 1]
    fixed, per = 3.5 * GiB, 0.6 * GiB
    assert choose_pass_batch(64, per, fixed, 100 * GiB, 8) == 64  # 3.5 + 38.4 <= 80
    assert choose_pass_batch(64, per, fixed, 21 * GiB, 8) == 16  # 13.1 <= 16.8 < 22.7
    assert choose_pass_batch(64, per, fixed, 11 * GiB, 8) == 8  # 8.3 <= 8.8
    assert choose_pass_batch(64, per, fixed, 4 * GiB, 8) == 8  # nothing fits: the smallest
    monkeypatch.setenv("TOON_MEMORY_GB", "12.5")
    assert available_memory(torch.device("cpu")) == int(12.5 * GiB)
    monkeypatch.delenv("TOON_MEMORY_GB")
    assert 0 < available_memory(torch.device("cpu"))


def test_probe_halves_until_a_pass_fits() -> None:
    from common.runs import probe_pass_batch

    tried = []

    def try_pass(b: int) -> None:
        tried.append(b)
        if b > 4:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory at {b}")

    assert probe_pass_batch([32, 16, 8, 4, 2], try_pass) == 4
    assert tried == [32, 16, 8, 4]
    with pytest.raises(TrainError, match="even a pass of 8 image"):
        probe_pass_batch([16, 8], try_pass)


def test_stop_signals_wait_for_a_protected_write() -> None:
    import os
    import signal

    from common.runs import Interrupted, StopSignals

    before = signal.getsignal(signal.SIGINT)
    order = []
    with StopSignals("test") as stops:
        with pytest.raises(Interrupted) as info:
            with stops.protect():
                os.kill(os.getpid(), signal.SIGINT)
                order.append("write finished")  # the signal waits for the block
        assert order == ["write finished"] and info.value.exit_status == 130
        with pytest.raises(Interrupted):
            with stops.protect():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)  # a second one abandons the write
                order.append("not reached")
        assert order == ["write finished"]
        with pytest.raises(Interrupted, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)  # outside a write: at once
    assert signal.getsignal(signal.SIGINT) is before


def test_trim_log_drops_lines_and_events_past_the_resume_state(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from torch.utils.tensorboard import SummaryWriter

    from common.runs import trim_log

    w = SummaryWriter(str(tmp_path))
    for step in (8, 16, 24):
        w.add_scalar("loss", float(step), global_step=step)
    w.close()
    late = tmp_path / "events.out.tfevents.9999999999.host.2.0"  # a second run, only past 16
    w = SummaryWriter(str(tmp_path), filename_suffix=".late")
    w.add_scalar("loss", 1.0, global_step=24)
    w.close()
    (first,) = [p for p in tmp_path.glob("events.*") if not p.name.endswith(".late")]
    (second,) = tmp_path.glob("events.*.late")
    second.rename(late)
    (tmp_path / "stats.jsonl").write_text(
        "".join(json.dumps({"step": s}) + "\n" for s in (8, 16, 24))
    )
    trim_log(tmp_path, "stats.jsonl", lambda x: x["step"] <= 16, 16)
    assert [json.loads(x)["step"] for x in (tmp_path / "stats.jsonl").open()] == [8, 16]
    assert not late.exists()  # nothing left in it
    steps = [e.step for e in EventFileLoader(str(first)).Load() if e.HasField("summary")]
    assert steps == [8, 16]


def test_kimg_bar_shows_speed_and_peak_memory(capsys: pytest.CaptureFixture[str]) -> None:
    from common.runs import kimg_bar

    bar = kimg_bar(1000, 0, "test", peak=lambda: 3 * 2**30, peak_label=" RSS")
    bar.note("G pass 1/8")
    assert "G pass 1/8" in capsys.readouterr().err
    bar.update_to(500)
    bar.close()
    err = capsys.readouterr().err
    assert "s/kimg" in err and "img/s" in err and "ETA " in err and "peak 3.0 GiB RSS" in err
    assert bar.speed() is not None and bar.speed()[1] > 0


def test_default_workers_follow_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from common.runs import default_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert default_workers(4) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    assert default_workers(4) == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert default_workers(4) == 0


def test_tick_clock_ends_ticks_on_the_image_count_and_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tick of 0.4 kimg started at 1000 images ends at 1400 (or when the run is done); its
    figures count the images and seconds since the start."""
    now = [100.0]
    monkeypatch.setattr(runs.time, "time", lambda: now[0])
    clock = runs.TickClock(0.4, 1000)
    assert not clock.due(1399, False) and clock.due(1400, False) and clock.due(1001, True)
    now[0] = 102.0
    figures = clock.figures({"tick": 3, "cur_nimg": 1400}, torch.device("cpu"))
    assert figures["Progress/tick"] == 3 and figures["Progress/kimg"] == pytest.approx(1.4)
    assert figures["Timing/sec_per_kimg"] == pytest.approx(5.0)
    assert figures["Timing/images_per_sec"] == pytest.approx(200.0)
    assert figures["Resources/peak_rss_gb"] > 0
    clock.restart(1400)
    assert not clock.due(1799, False) and clock.due(1800, False)


def test_log_stats_appends_lines_and_scalars(tmp_path: Path) -> None:
    class Writer:
        def __init__(self) -> None:
            self.calls: list[tuple[str, float, int]] = []

        def add_scalar(self, k: str, v: float, global_step: int) -> None:
            self.calls.append((k, v, global_step))

    w = Writer()
    runs.log_stats(tmp_path, w, {"a": 1.0, "b": 2.5}, 400)
    runs.log_stats(tmp_path, w, {"a": 3.0}, 800)
    lines = [json.loads(x) for x in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert lines == [{"a": 1.0, "b": 2.5}, {"a": 3.0}]
    assert w.calls == [("a", 1.0, 400), ("b", 2.5, 400), ("a", 3.0, 800)]
