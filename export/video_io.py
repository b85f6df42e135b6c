"""Reading and writing video files with PyAV (FFmpeg bundled in the ``av`` wheel; no system
ffmpeg), for ``toon-infer`` on clips.

- :class:`VideoSource` opens a file and describes its first video stream (size, frame rate,
  expected frame count, rotation) and its first audio stream; :meth:`VideoSource.items` demuxes
  and decodes in file order, yielding RGB frames and the audio packets between them, so that
  the writer can keep the input's interleaving.
- :class:`VideoSink` encodes RGB frames with libx264 (``preset``, ``crf``) at the input's
  timestamps and copies the audio packets (re-encoded to AAC only where the output container
  cannot hold the input's audio codec, or in MP4 one that players do not expect there).
- Damage is an error, not a shorter video: a file FFmpeg cannot open, a decode error, a frame
  the decoder marks corrupt, or fewer frames than the container declares (a truncated file)
  raises :class:`VideoError` with one line.

Imports: numpy and av (PyAV), loaded when a video is opened. Never torch.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import ToonError, error_line

# Input suffixes toon-infer treats as video, and those whose container the output keeps.
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts"}
    | {".flv", ".wmv", ".3gp", ".ogv"}
)
KEPT_VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv"})
MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
# Audio codecs copied into MP4 as they are (what players expect there; FFmpeg's MP4 muxer
# takes more, e.g. PCM, which few players read): others are re-encoded to AAC.
MP4_AUDIO = frozenset({"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"})
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow")
DEFAULT_PRESET = "veryfast"
DEFAULT_CRF = 20
TRUNCATION_SLACK = 2  # frames a container's declared count may exceed what decodes cleanly


class VideoError(ToonError):
    """A video that cannot be read or written (one-line message naming file and remedy)."""


def is_video(path: str) -> bool:
    """Whether toon-infer treats ``path`` as a video (by its suffix)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def output_suffix(src: str) -> str:
    """The output's suffix: the input's container where it holds H.264, else ``.mp4``."""
    suffix = Path(src).suffix.lower()
    return suffix if suffix in KEPT_VIDEO_SUFFIXES else ".mp4"


def add_video_arguments(parser: Any, int_range: Any) -> None:
    """toon-infer's video flags (``int_range(lo, hi)``: its range-checked integer type)."""
    video = parser.add_argument_group("video")
    video.add_argument(
        "--detect-every",
        type=int_range(1, 1000),
        default=5,
        help="run the face detector every N frames, tracking in between (5)",
    )
    video.add_argument(
        "--preset", choices=PRESETS, default=DEFAULT_PRESET, help="x264 speed preset (veryfast)"
    )
    video.add_argument(
        "--crf",
        type=int_range(0, 51),
        default=DEFAULT_CRF,
        help=f"x264 quality, 0 (lossless) to 51 ({DEFAULT_CRF})",
    )
    video.add_argument(
        "--no-smooth",
        dest="smooth",
        action="store_false",
        help="do not smooth the landmarks over time (they jitter)",
    )


def _av():
    try:
        import av
    except ImportError:
        raise VideoError(
            "video needs PyAV: pip install av (it brings its own FFmpeg; no system ffmpeg)"
        ) from None
    av.logging.set_level(av.logging.FATAL)  # errors are raised as exceptions; keep stderr clean
    return av


def _ffmpeg_error(name: str, e: BaseException, what: str) -> VideoError:
    text = error_line(e)
    text = text.split(": '", 1)[0] if ": '" in text else text  # PyAV appends the file name
    text = re.sub(r"^\[Errno -?\d+\] ", "", text)
    return VideoError(f"{name}: {what} ({text}); the file is damaged, truncated or not a video")


@dataclass
class Frame:
    """One decoded frame: ``rgb`` (H, W, 3) uint8 upright, its index, presentation time in
    seconds, and its timestamp in the stream's time base (None when the file gives none)."""

    index: int
    rgb: np.ndarray
    time: float
    pts: int | None


class VideoSource:
    """A video file opened for reading (see the module docstring). Use as a context manager."""

    def __init__(self, path: str | os.PathLike) -> None:
        av = _av()
        self.path = Path(path)
        self.name = str(path)
        if not self.path.exists():
            raise VideoError(f"{self.name}: no such file")
        if self.path.is_dir():
            raise VideoError(f"{self.name}: is a folder, not a video")
        try:
            self.container = av.open(str(path), "r")
        except av.FFmpegError as e:
            raise _ffmpeg_error(self.name, e, "cannot open as a video") from None
        except OSError as e:
            raise VideoError(f"{self.name}: cannot read ({error_line(e)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"{self.name}: no video stream (an audio file?); pass a video")
        self.video = self.container.streams.video[0]
        self.video.thread_type = "AUTO"
        self.audio = self.container.streams.audio[0] if self.container.streams.audio else None
        cc = self.video.codec_context
        self.width, self.height = int(cc.width), int(cc.height)
        if self.width < 2 or self.height < 2:
            self.container.close()
            raise VideoError(f"{self.name}: video size {self.width}x{self.height} is unusable")
        rate = self.video.average_rate or self.video.guessed_rate or self.video.base_rate
        self.rate = Fraction(rate) if rate and rate > 0 else Fraction(25)
        self.time_base = self.video.time_base or Fraction(1, 90000)
        self.declared_frames = int(self.video.frames or 0)
        self.rotation = 0  # set from the first frame's display matrix

    @property
    def fps(self) -> float:
        return float(self.rate)

    def expected_frames(self) -> int | None:
        """Frames the container declares, else its duration times the rate (None: unknown)."""
        if self.declared_frames:
            return self.declared_frames
        if self.video.duration:
            return round(float(self.video.duration * self.time_base) * self.fps)
        if self.container.duration:
            return round(self.container.duration / 1e6 * self.fps)
        return None

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def items(self) -> Iterator[tuple[str, Any]]:
        """``("video", Frame)`` and ``("audio", packet)`` in file order; raises VideoError on
        damage (see the module docstring)."""
        av = _av()
        streams = [self.video] + ([self.audio] if self.audio is not None else [])
        index = 0
        start = self.video.start_time or 0
        try:
            for packet in self.container.demux(streams):
                if packet.stream.type == "audio":
                    if packet.dts is not None and packet.size:
                        yield "audio", packet
                    continue
                for frame in packet.decode():
                    if frame.is_corrupt:
                        raise VideoError(
                            f"{self.name}: frame {index} is corrupt; the file is damaged or "
                            "truncated (re-export or re-download it)"
                        )
                    yield "video", self._frame(frame, index, start)
                    index += 1
        except av.FFmpegError as e:
            raise _ffmpeg_error(self.name, e, f"decoding failed after {index} frames") from None
        if index == 0:
            raise VideoError(
                f"{self.name}: no frame could be decoded; the file is damaged or truncated"
            )
        declared = self.declared_frames
        if declared and index + TRUNCATION_SLACK < declared:
            raise VideoError(
                f"{self.name}: truncated: {index} of the {declared} frames it declares could be "
                "decoded (copy or download the file again)"
            )
        if not declared and self.container.duration and self.fps:
            last = self._last_time
            expected = self.container.duration / 1e6
            if last + (TRUNCATION_SLACK + 1) / self.fps < expected - float(start * self.time_base):
                raise VideoError(
                    f"{self.name}: truncated: frames end at {last:.2f} s of the {expected:.2f} s "
                    "it declares (copy or download the file again)"
                )

    _last_time = 0.0

    def _frame(self, frame: Any, index: int, start: int) -> Frame:
        rgb = frame.to_ndarray(format="rgb24")
        rotation = int(getattr(frame, "rotation", 0) or 0) % 360
        if index == 0:
            self.rotation = rotation
        if rotation in (90, 180, 270):
            # The display matrix turns the picture counter-clockwise by ``rotation`` degrees.
            rgb = np.ascontiguousarray(np.rot90(rgb, rotation // 90))
        pts = frame.pts
        if pts is not None:
            t = float((pts - start) * self.time_base)
        else:
            t = index / self.fps
        self._last_time = t
        return Frame(index=index, rgb=rgb, time=t, pts=pts)


class VideoSink:
    """An H.264 video file being written to ``path`` (normally a temporary name, renamed by the
    caller once :meth:`close` succeeds). ``audio``: the source's audio stream to copy.

    Frames are given in presentation order with the source's timestamps (``pts`` in
    ``time_base``), so variable frame rates survive; frames without a timestamp are numbered at
    ``rate``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        muxer: str,
        width: int,
        height: int,
        rate: Fraction,
        time_base: Fraction,
        *,
        preset: str = DEFAULT_PRESET,
        crf: int = DEFAULT_CRF,
        threads: int = 0,
        audio: Any = None,
    ) -> None:
        av = _av()
        self.name = str(path)
        self.muxer = muxer
        try:
            self.container = av.open(str(path), "w", format=muxer)
        except (av.FFmpegError, OSError) as e:
            raise VideoError(f"{path}: cannot write ({error_line(e)})") from None
        s = self.container.add_stream("libx264", rate=rate)
        s.width, s.height = width, height
        # 4:2:0 needs even sides; an odd-sized input keeps its size in 4:4:4.
        s.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        s.codec_context.time_base = time_base
        s.time_base = time_base
        s.options = {"preset": preset, "crf": str(crf)}
        s.codec_context.thread_count = threads
        self.video = s
        self.time_base = time_base
        self.rate = rate
        self.audio_in = audio
        self.audio_out = None
        self.audio_mode = None
        if audio is not None:
            self._add_audio(audio)
        self._last_pts: int | None = None
        self.frames = 0

    def _add_audio(self, audio: Any) -> None:
        name = audio.codec_context.name
        playable = name in MP4_AUDIO if self.muxer == "mp4" else True
        if playable and name in self.container.supported_codecs:
            self.audio_out = self.container.add_stream_from_template(audio)
            self.audio_mode = "copy"
        else:  # e.g. PCM into MP4: re-encode
            self.audio_out = self.container.add_stream("aac", rate=audio.codec_context.sample_rate)
            self.audio_mode = "aac"

    def write_frame(self, rgb: np.ndarray, pts: int | None) -> None:
        """Encode one RGB frame (H, W, 3 uint8) shown at ``pts`` (source time base)."""
        av = _av()
        if pts is None or (self._last_pts is not None and pts <= self._last_pts):
            step = max(round(1 / (self.rate * self.time_base)), 1)
            pts = 0 if self._last_pts is None else self._last_pts + step
        self._last_pts = pts
        # A frame over the array's own memory (no copy); the encoder converts it to YUV at once.
        frame = av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = pts
        frame.time_base = self.time_base
        self.container.mux(self.video.encode(frame))
        self.frames += 1

    def write_audio(self, packet: Any) -> None:
        """Copy (or re-encode) one audio packet of the source's audio stream."""
        if self.audio_out is None:
            return
        if self.audio_mode == "copy":
            packet.stream = self.audio_out
            self.container.mux(packet)
            return
        for frame in self.audio_in.codec_context.decode(packet):
            frame.pts = None  # the encoder numbers samples itself
            self.container.mux(self.audio_out.encode(frame))

    def close(self) -> None:
        """Flush the encoders and finish the file (raises VideoError when that fails)."""
        av = _av()
        try:
            self.container.mux(self.video.encode(None))
            if self.audio_mode == "aac":
                self.container.mux(self.audio_out.encode(None))
            self.container.close()
        except (av.FFmpegError, OSError) as e:
            raise VideoError(f"{self.name}: cannot finish the video ({error_line(e)})") from None

    def abort(self) -> None:
        """Close without caring whether the file is complete (it is deleted by the caller)."""
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - the file is discarded anyway
            pass


def probe(path: str | os.PathLike) -> dict:
    """Frame count, rate, size and streams of a video, by decoding every frame (tests and the
    benchmark use it to check outputs independently of the writer)."""
    av = _av()
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
        c.seek(0)
        audio = c.streams.audio[0] if c.streams.audio else None
        rate = v.average_rate or v.guessed_rate
        return {
            "frames": frames,
            "fps": float(rate) if rate else math.nan,
            "width": v.codec_context.width,
            "height": v.codec_context.height,
            "codec": v.codec_context.name,
            "audio": audio.codec_context.name if audio is not None else None,
            "audio_packets": sum(1 for p in c.demux(audio) if p.size) if audio else 0,
            "format": c.format.name,
        }
