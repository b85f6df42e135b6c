"""Toonify a video: every frame's faces tracked, toonified and pasted back (or cropped).

    from export.video import VideoOptions, toonify_video
    report = toonify_video("clip.mp4", "clip_toon.mp4", toonifier)

Four stages run in threads joined by short queues, each taking the frames in order: decoding
(a reader thread), the faces' tracking and alignment (a tracker thread), the model and the
paste-back (the calling thread) and encoding (a writer thread), so that on two cores the model
overlaps the tracking, the decoding and the encoding. Audio packets travel through the same
queues in file order and are copied into the output. The output is written to a temporary
name beside the final one and renamed only when the whole video succeeded: a damaged input, an
error or an interrupt leaves no file under the final name.

``mode="paste"`` writes the video at its size with the faces pasted back (``paste_mask`` as for
photos); ``mode="crop"`` writes the toonified aligned crop of the main face (the oldest track),
a black frame while there is none.

Imports: numpy, onnxruntime (through the runtime), av, the torch-free ``faces``. Never torch.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.files import temp_path
from export.tracking import FaceTracker, TrackConfig
from export.video_io import (
    DEFAULT_CRF,
    DEFAULT_PRESET,
    MUXERS,
    VideoError,
    VideoSink,
    VideoSource,
)

QUEUE_SIZE = 8  # frames in flight between two stages
_END = object()


@dataclass(frozen=True)
class VideoOptions:
    """How a video is toonified and encoded."""

    mode: str = "paste"  # "paste" (the frame with faces pasted back) or "crop" (the main face)
    paste_mask: str = "person"  # as for photos: "person" or "square"
    paste_blend: str = "change"  # as for photos: "change" or "replace"
    preset: str = DEFAULT_PRESET  # x264 speed preset
    crf: int = DEFAULT_CRF  # x264 constant rate factor: 0 lossless .. 51 worst (18-23: good)
    encoder_threads: int = 0  # x264 threads (0: x264 decides)
    detect_size: int = 640  # detection on frames downscaled to this longest side
    track: TrackConfig = field(default_factory=TrackConfig)

    def __post_init__(self) -> None:
        if self.mode not in ("paste", "crop"):
            raise ValueError(f"mode must be paste or crop, got {self.mode!r}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in 0..51, got {self.crf}")


@dataclass
class FrameResult:
    """What the faces stage made of one frame (given to ``on_frame``)."""

    index: int
    time: float
    rgb: np.ndarray  # the decoded input frame (H, W, 3)
    out: np.ndarray  # the frame written (before encoding)
    faces: list  # faces.align.AlignedFace per tracked face
    track_ids: list[int]


class _Stage(threading.Thread):
    """A pipeline thread that records its exception instead of dying silently."""

    def __init__(self, target: Callable[[], None], name: str, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self._run_target = target
        self.error: BaseException | None = None
        self.stop = stop

    def run(self) -> None:
        try:
            self._run_target()
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            self.error = e
            self.stop.set()


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless the pipeline stops first (False then)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    """The next item, or _END once the pipeline stops."""
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return _END


def make_aligner(toon: Any, options: VideoOptions):
    """The aligner for a model's crops, detecting at ``options.detect_size`` without the
    upsampled retry (a video has many frames to find a face in)."""
    from faces.align import Aligner

    return Aligner(detect_size=options.detect_size, retry_upsample=False, **toon.align_options())


def toonify_video(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    toon: Any,
    options: VideoOptions | None = None,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
    on_frame: Callable[[FrameResult], None] | None = None,
    keep_empty: bool = True,
) -> dict:
    """Toonify the video ``src`` into ``dst`` (written atomically); returns the report:
    frames, fps, size, faces per frame, detector runs, per-stage seconds and frames/s.

    ``toon``: an :class:`export.runtime.Toonifier`. ``progress(done, total)`` is called after
    each frame (total: the container's estimate, or None). ``on_frame`` receives every
    :class:`FrameResult` (tests and benchmarks). ``keep_empty=False``: a video in which no
    frame had a face is not written (report ``written: false``). Raises :class:`VideoError`
    for a damaged input (nothing is left under ``dst``) and ``FileExistsError`` when ``dst``
    exists and not ``overwrite``.
    """
    from export.video_paste import FramePaster

    options = options or VideoOptions()
    paster = FramePaster(toon.size, options.paste_mask, blend=options.paste_blend)
    dst = Path(dst)
    aligner = make_aligner(toon, options)
    tracker = FaceTracker(aligner.detector, options.track)
    source = VideoSource(src)
    muxer = MUXERS.get(dst.suffix.lower(), "mp4")
    timings = dict.fromkeys(("decode", "track", "align", "model", "paste", "encode"), 0.0)
    faces_per_frame: list[int] = []
    stop = threading.Event()
    decoded: queue.Queue = queue.Queue(QUEUE_SIZE)
    aligned: queue.Queue = queue.Queue(QUEUE_SIZE)
    finished: queue.Queue = queue.Queue(QUEUE_SIZE)
    tmp = temp_path(dst)
    sink: list[VideoSink] = []
    total = source.expected_frames()
    black = None

    def read() -> None:
        items = source.items()
        while True:
            t0 = time.perf_counter()
            item = next(items, _END)
            timings["decode"] += time.perf_counter() - t0
            if item is _END or not _put(decoded, item, stop):
                break
        _put(decoded, _END, stop)

    def track() -> None:
        while True:
            item = _get(decoded, stop)
            if item is _END:
                break
            kind, payload = item
            if kind == "video":
                frame = payload
                t0 = time.perf_counter()
                tracks = tracker.update(frame.rgb, frame.time)
                t1 = time.perf_counter()
                faces = [
                    aligner.warp(frame.rgb, tr.landmarks, tr.box, source="track", prescaled=True)
                    for tr in tracks
                ]
                t2 = time.perf_counter()
                # The paste masks depend on the landmarks alone: made here, beside the model.
                alphas = [paster.alpha_u8(f) for f in faces] if options.mode == "paste" else None
                timings["track"] += t1 - t0
                timings["align"] += t2 - t1
                timings["paste"] += time.perf_counter() - t2
                item = ("video", (frame, faces, alphas, [tr.id for tr in tracks]))
            if not _put(aligned, item, stop):
                return
        _put(aligned, _END, stop)

    def write() -> None:
        while True:
            item = _get(finished, stop)
            if item is _END:
                return
            kind, payload = item
            t0 = time.perf_counter()
            if kind == "video":
                rgb, pts = payload
                if not sink:
                    h, w = rgb.shape[:2]
                    sink.append(
                        VideoSink(
                            tmp,
                            muxer,
                            w,
                            h,
                            source.rate,
                            source.time_base,
                            preset=options.preset,
                            crf=options.crf,
                            threads=options.encoder_threads,
                            audio=source.audio,
                        )
                    )
                    for packet in pending_audio:
                        sink[0].write_audio(packet)
                    pending_audio.clear()
                sink[0].write_frame(rgb, pts)
            elif sink:
                sink[0].write_audio(payload)
            else:  # audio before the first frame: held until the sink exists
                pending_audio.append(payload)
            timings["encode"] += time.perf_counter() - t0

    pending_audio: list = []
    reader = _Stage(read, "toon-video-read", stop)
    tracking = _Stage(track, "toon-video-track", stop)
    writer = _Stage(write, "toon-video-write", stop)
    stages = (reader, tracking, writer)  # errors are raised in this order
    t_start = time.perf_counter()
    ok = False
    try:
        for stage in stages:
            stage.start()
        while True:
            item = _get(aligned, stop)
            if item is _END:
                break
            kind, payload = item
            if kind == "audio":
                _put(finished, item, stop)
                continue
            frame, faces, alphas, track_ids = payload
            t2 = time.perf_counter()
            outs = toon.run(np.stack([f.crop[:, :, :3] for f in faces])) if faces else []
            t3 = time.perf_counter()
            if options.mode == "crop":
                if black is None:
                    black = np.zeros((toon.size, toon.size, 3), np.uint8)
                out = outs[0] if faces else black
            elif faces:
                out = paster.paste(frame.rgb, faces, outs, alphas)
            else:
                out = frame.rgb
            t4 = time.perf_counter()
            timings["model"] += t3 - t2
            timings["paste"] += t4 - t3
            faces_per_frame.append(len(faces))
            if on_frame is not None:
                on_frame(FrameResult(frame.index, frame.time, frame.rgb, out, faces, track_ids))
            if not _put(finished, ("video", (out, frame.pts)), stop):
                break
            if progress is not None:
                progress(len(faces_per_frame), total)
        _put(finished, _END, stop)
        for stage in reversed(stages):
            stage.join()
        for stage in stages:
            if stage.error is not None:
                raise stage.error
        if not sink:
            raise VideoError(
                f"{source.name}: no frame could be decoded; the file is damaged or truncated"
            )
        sink[0].close()
        written = keep_empty or any(faces_per_frame)
        if written:
            _publish(tmp, dst, overwrite)
        ok = True
    finally:
        stop.set()
        for stage in stages:
            stage.join(timeout=5)
        source.close()
        if not ok:
            if sink:
                sink[0].abort()
        if os.path.lexists(tmp):
            os.unlink(tmp)
    wall = time.perf_counter() - t_start
    n = len(faces_per_frame)
    return {
        "written": written,
        "frames": n,
        "fps": round(source.fps, 3),
        "size": [int(sink[0].video.width), int(sink[0].video.height)],
        "input_size": [source.width, source.height],
        "rotation": source.rotation,
        "audio": sink[0].audio_mode,
        "faces": faces_per_frame,
        "frames_with_faces": sum(1 for k in faces_per_frame if k),
        "detector_runs": tracker.stats["detections"],
        "scene_cuts": tracker.stats["cuts"],
        "preset": options.preset,
        "crf": options.crf,
        "timings_ms": {
            **{k: round(v * 1e3, 1) for k, v in timings.items()},
            "detect": round(tracker.stats["detect_s"] * 1e3, 1),
            "landmarks": round(tracker.stats["landmarks_s"] * 1e3, 1),
            "total": round(wall * 1e3, 1),
        },
        "frames_per_s": round(n / wall, 2) if wall > 0 else None,
    }


def _publish(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Move the finished temporary file to ``dst`` (never replacing an existing file unless
    ``overwrite``)."""
    from common.files import FILE_MODE

    os.chmod(tmp, FILE_MODE)
    if overwrite:
        os.replace(tmp, dst)
        return
    try:
        os.link(tmp, dst)  # atomic, and fails when dst exists
    except FileExistsError:
        raise FileExistsError(
            f"{dst} exists (pass --overwrite to replace it, or --skip-existing to keep it)"
        ) from None
    except OSError:  # a file system without hard links
        if os.path.lexists(dst):
            raise FileExistsError(f"{dst} exists (pass --overwrite to replace it)") from None
        os.replace(tmp, dst)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def video_output_path(src: str, out: str | None, multi: bool, base: Path | None) -> Path:
    """Where toon-infer writes the result of the video ``src``: ``NAME_toon.EXT`` (EXT the
    input's container when it is MP4, M4V, MOV or MKV, else ``.mp4``), placed as for photos;
    ``-o FILE.mp4`` with one input names the file."""
    from export.infer_cli import output_path
    from export.video_io import KEPT_VIDEO_SUFFIXES, VIDEO_SUFFIXES, output_suffix

    if out is not None and not multi and Path(out).suffix.lower() in VIDEO_SUFFIXES:
        if Path(out).suffix.lower() not in KEPT_VIDEO_SUFFIXES:
            kept = ", ".join(sorted(KEPT_VIDEO_SUFFIXES))
            raise ValueError(f"-o {out}: a video output must end in one of {kept}")
        return Path(out)
    return output_path(src, out, multi, False, None, base).with_suffix(output_suffix(src))


def process_video(src: str, toon: Any, args: Any, multi: bool, base: Path | None, written) -> dict:
    """toon-infer's handling of one video argument (flags as parsed by its parser); returns
    its report (raises for damaged inputs and outputs that may not be written)."""
    import sys

    from export.infer_cli import _check_target

    if src == "-" or args.output == "-":
        raise ValueError("a video cannot be read from stdin or written to stdout: pass -o FILE")
    dst = video_output_path(src, args.output, multi, base)
    report: dict = {"input": src, "outputs": [str(dst)]}
    if not _check_target(dst, src, args, written):
        report["skipped"] = "output exists"
        return report
    options = VideoOptions(
        mode="crop" if args.crop else "paste",
        paste_mask=args.paste_mask,
        paste_blend=args.paste_blend,
        preset=args.preset,
        crf=args.crf,
        track=TrackConfig(
            detect_every=args.detect_every, max_faces=args.max_faces, smooth=args.smooth
        ),
    )
    from tqdm import tqdm

    bar = tqdm(unit="frame", desc=Path(src).name, file=sys.stderr, disable=None, leave=not multi)

    def progress(done: int, total: int | None) -> None:
        if total and bar.total != total:
            bar.total = max(total, done)
        bar.update(done - bar.n)

    try:
        report.update(
            toonify_video(
                src,
                dst,
                toon,
                options,
                overwrite=args.overwrite,
                progress=progress,
                keep_empty=not args.crop,
            )
        )
    finally:
        bar.close()
    if report.get("written") is False:
        report["outputs"] = []
    else:
        written.add(dst, src)
    return report
