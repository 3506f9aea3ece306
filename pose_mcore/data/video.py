"""Video files in and out (PyAV): clips of a fixed size and frame count for the VAE, MP4s of samples.

A clip is ``frames`` frames taken at ``fps`` from the start of the file (the file's own rate when
``fps`` is None; otherwise the frame shown at each time ``k / fps``), each resized so that it covers
``height x width`` and centre-cropped. An image file is a one-frame clip.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif")


class VideoError(ValueError):
    """A file that gives no clip; the message names the file and the reason."""


def fit(image: Image.Image, height: int, width: int) -> Image.Image:
    """Resize ``image`` (bicubic) to cover ``height x width``, then centre-crop to it."""
    scale = max(height / image.height, width / image.width)
    size = (max(width, math.ceil(image.width * scale - 1e-6)), max(height, math.ceil(image.height * scale - 1e-6)))
    if size != image.size:
        image = image.resize(size, Image.BICUBIC)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def read_image(path: str | Path) -> Image.Image:
    """An image file as RGB, at its own size."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as e:
        raise VideoError(f"{path}: cannot read the image ({e})") from e


def _decoded(path: Path) -> tuple[list[Image.Image], list[float], float]:
    """Every frame of a video with its presentation time (s), and the stream's frame rate."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            frames, times = [], []
            for frame in container.decode(stream):
                frames.append(frame.to_image())
                times.append(float(frame.time) if frame.time is not None else len(times) / rate)
    except (av.error.FFmpegError, OSError) as e:  # in words: FFmpeg's error numbers say nothing to a user
        reason = (getattr(e, "strerror", None) or str(e)).rstrip(".")
        raise VideoError(f"{path}: cannot decode: {reason[:1].lower()}{reason[1:]}") from e
    if not frames:
        raise VideoError(f"{path}: no frames")
    return frames, times, rate


def read_clip(path: str | Path, frames: int, height: int, width: int, fps: float | None = None
              ) -> list[Image.Image]:
    """``frames`` RGB frames of ``height x width`` from a video (or image, for ``frames == 1``) file."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if frames != 1:
            raise VideoError(f"{path}: an image is one frame; --frames {frames} needs a video")
        return [fit(read_image(path), height, width)]
    decoded, times, rate = _decoded(path)
    if fps is None:
        if len(decoded) < frames:
            raise VideoError(f"{path}: too short: {len(decoded)} frames, need {frames}")
        picked = decoded[:frames]
    else:
        start, shown = times[0], times[-1] + 1 / rate  # the last frame is shown for one frame period
        need = (frames - 1) / fps
        if need >= shown - start - 1e-9:
            raise VideoError(f"{path}: too short: {shown - start:.2f} s, need {need:.2f} s ({frames} frames at "
                             f"{fps:g} fps)")
        picked, j = [], 0
        for k in range(frames):
            t = start + k / fps
            while j + 1 < len(times) and times[j + 1] <= t + 1e-6:
                j += 1
            picked.append(decoded[j])
    return [fit(f.convert("RGB"), height, width) for f in picked]


def write_mp4(frames: np.ndarray, path: str | Path, fps: float = 16.0) -> None:
    """Write uint8 RGB frames ``[F, H, W, 3]`` as an H.264 MP4 (yuv420p: even sizes are padded by one pixel)."""
    path = Path(path)
    f, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w + pad_w, h + pad_h, "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
