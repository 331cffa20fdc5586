"""Video files in and out with PyAV: decode frames as tensors, encode the restored frames with
the source's frame rate, time base, size and pixel format, and copy the audio packets unchanged.

Why one function (`transcode`) and not a reader and a writer: a file interleaves audio and video
packets, so the audio is remuxed while the video is demuxed, in one pass with bounded memory.
The caller's `process` maps the decoded frames (an iterator) to restored frames, one out per
frame in, in order, and may hold a few (the temporal lookahead): every output frame takes the
presentation time stamp of its source frame, so frame rate, variable timing and frame count are
the source's exactly.

The output is written to a temporary file beside the target and moved over it with os.replace
only when complete: an error or Ctrl-C leaves no half-written video (and never touches a file
already at the target). PyAV (`pip install av`, the "video" extra) is imported lazily.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
FALLBACK_CODEC, FALLBACK_PIX_FMT = "libx264", "yuv420p"  # what every player reads
# Quality for the x264/x265 fallbacks: CRF 18 is visually lossless for most content (x264's own
# guidance); other encoders get the source's bit rate when it is known.
CRF = "18"
# swscale's RGB <-> YUV with default flags is biased (-1 level on a round trip of a real clip:
# every un-restored pixel would darken); accurate rounding with full chroma interpolation is not
# (bias < 0.02 levels, mean error 0.4 levels, the 4:2:0 chroma's own loss).
SWS_FLAGS = "BICUBIC|ACCURATE_RND|FULL_CHR_H_INT|FULL_CHR_H_INP"


class VideoError(ValueError):
    """An unreadable, unsupported or corrupt video, or one without a video stream; the message
    names the file."""


@dataclass(frozen=True)
class VideoInfo:
    """What the output keeps from the source (and what the progress bar needs)."""

    path: Path
    width: int
    height: int
    rate: Fraction  # average frame rate
    time_base: Fraction
    pix_fmt: str
    codec: str
    frames: int | None  # from the container, or duration x rate; None when unknown
    audio_streams: int
    high_bit_depth: bool  # decoded as 16-bit RGB when the source has more than 8 bits


@dataclass(frozen=True)
class EncodeChoice:
    codec: str
    pix_fmt: str
    note: str | None  # said to the user when the source's codec or pixel format could not be kept


def _av():
    try:
        import av
    except ImportError:  # pragma: no cover - the "video" extra is missing
        raise VideoError("reading videos needs PyAV: pip install av (or the 'video' extra: pip install comfyui-lafr[video])") from None
    return av


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _open_input(path: Path):
    av = _av()
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{path}: not a readable video ({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream in this file")
    return container


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.strip().splitlines()[0][:200] if text else type(exc).__name__


def _info(path: Path, container) -> VideoInfo:
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if not ctx.width or not ctx.height or ctx.pix_fmt is None:
        raise VideoError(f"{path}: the video stream has no size or pixel format (corrupt or unsupported codec '{ctx.name}')")
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise VideoError(f"{path}: the video stream has no frame rate")
    frames = stream.frames or None
    if frames is None and stream.duration is not None and stream.time_base:
        frames = round(float(stream.duration * stream.time_base * rate))
    elif frames is None and container.duration:
        frames = round(container.duration / 1_000_000 * float(rate))
    fmt = stream.format
    deep = fmt is not None and any(c.bits > 8 for c in fmt.components)
    return VideoInfo(path, ctx.width, ctx.height, Fraction(rate), Fraction(stream.time_base), ctx.pix_fmt, ctx.name,
                     frames, len(container.streams.audio), deep)


def probe(path: str | Path) -> VideoInfo:
    """The source's stream parameters, or VideoError naming the file."""
    path = Path(path)
    container = _open_input(path)
    try:
        return _info(path, container)
    finally:
        container.close()


def choose_encoder(info: VideoInfo) -> EncodeChoice:
    """The source's codec and pixel format when this PyAV can encode them, else libx264/yuv420p."""
    av = _av()
    try:
        codec = av.Codec(info.codec, "w")
    except (av.FFmpegError, ValueError):
        codec = None
    if codec is not None and codec.type == "video":
        formats = {f.name for f in codec.video_formats or ()}
        if not formats or info.pix_fmt in formats:
            return EncodeChoice(codec.name, info.pix_fmt, None)
    x264 = {f.name for f in av.Codec(FALLBACK_CODEC, "w").video_formats or ()}
    pix_fmt = info.pix_fmt if info.pix_fmt in x264 else FALLBACK_PIX_FMT
    cannot = f"'{codec.name}' cannot encode {info.pix_fmt}" if codec is not None and codec.type == "video" else \
        f"this PyAV cannot encode '{info.codec}'"
    return EncodeChoice(FALLBACK_CODEC, pix_fmt, f"{cannot}: written as H.264 ({FALLBACK_CODEC}, {pix_fmt}, CRF {CRF})")


def temp_path(target: Path) -> Path:
    """A hidden file beside `target`, same suffix (the muxer is chosen by it), unique per process."""
    return target.with_name(f".{target.stem}.lafr-partial-{os.getpid()}{target.suffix}")


def _to_tensor(frame, deep: bool) -> torch.Tensor:
    """An av.VideoFrame -> [1, H, W, 3] float32 0..1 (16-bit RGB for deep sources)."""
    array = frame.to_ndarray(format="rgb48le" if deep else "rgb24", src_color_range=frame.color_range, interpolation=_sws_flags())
    scale = 65535.0 if deep else 255.0
    return torch.from_numpy(array.astype(np.float32) / scale)[None]


def _to_frame(av, image: torch.Tensor, deep: bool, pix_fmt: str, colour: dict):
    """[1, H, W, 3] (or [H, W, 3]) float 0..1 -> an av.VideoFrame in the output's pixel format."""
    pixels = image[0] if image.ndim == 4 else image
    pixels = pixels[..., :3].detach().float().cpu().clamp(0, 1).numpy()
    if deep:
        frame = av.VideoFrame.from_ndarray((pixels * 65535 + 0.5).astype(np.uint16), format="rgb48le")
    else:
        frame = av.VideoFrame.from_ndarray((pixels * 255 + 0.5).astype(np.uint8), format="rgb24")
    return frame.reformat(format=pix_fmt, interpolation=_sws_flags(), **colour)


def _sws_flags():
    from av.video.reformatter import Interpolation

    flags = Interpolation.BICUBIC
    for name in SWS_FLAGS.split("|")[1:]:
        flags |= Interpolation[name]
    return flags


def transcode(
    source: str | Path,
    target: str | Path,
    process: Callable[[Iterator[torch.Tensor]], Iterator[torch.Tensor]],
    on_frame: Callable[[int], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> int:
    """Decode `source`'s first video stream into [1, H, W, 3] float frames, run them through
    `process`, encode its frames into `target` (audio streams copied packet for packet, other
    streams dropped); returns the number of frames written. `on_frame(n)` after each frame
    written, `on_note(text)` for a codec fallback. Nothing is left at `target` on any error."""
    av = _av()
    source, target = Path(source), Path(target)
    container = _open_input(source)
    partial = temp_path(target)
    out = None
    try:
        info = _info(source, container)
        choice = choose_encoder(info)
        if choice.note and on_note:
            on_note(f"{source}: {choice.note}")
        target.parent.mkdir(parents=True, exist_ok=True)
        out = av.open(str(partial), "w", format=_muxer(av, target))
        video_in = container.streams.video[0]
        video_out = _add_video_stream(out, video_in, info, choice)
        audio = {s.index: out.add_stream_from_template(s) for s in container.streams.audio}
        colour = _colour(video_in.codec_context)
        pts: deque = deque()
        decoded = [0]
        dropped = len(container.streams) - 1 - len(audio)
        if dropped and on_note:
            on_note(f"{source}: {dropped} stream{'s' if dropped > 1 else ''} other than video and audio (subtitles, data) not copied")

        def frames() -> Iterator[torch.Tensor]:
            for packet in container.demux(video_in, *container.streams.audio):
                if packet.stream.index in audio:
                    if packet.dts is not None:  # the demuxer's empty flush packets are not data
                        packet.stream = audio[packet.stream.index]
                        out.mux(packet)
                    continue
                for frame in packet.decode():  # the last, empty packet flushes the decoder
                    # a container without time stamps (some AVI): the frame's place at the average rate
                    pts.append(frame.pts if frame.pts is not None else round(decoded[0] / (info.rate * info.time_base)))
                    decoded[0] += 1
                    yield _to_tensor(frame, info.high_bit_depth)

        written = 0
        for image in process(frames()):
            if not pts:
                raise RuntimeError("the frame processor returned more frames than it was given")
            frame = _to_frame(av, image, info.high_bit_depth, choice.pix_fmt, colour)
            frame.pts, frame.time_base = pts.popleft(), video_in.time_base
            out.mux(video_out.encode(frame))
            written += 1
            if on_frame:
                on_frame(written)
        if pts:
            raise RuntimeError(f"the frame processor returned {written} frames for {written + len(pts)}")
        out.mux(video_out.encode(None))
        out.close()
        out = None
        if written == 0:
            raise VideoError(f"{source}: no frame could be decoded (corrupt or empty video)")
        os.replace(partial, target)
        return written
    except av.FFmpegError as exc:
        raise VideoError(f"{source}: {_reason(exc)} (corrupt or unsupported video, or a stream {target.suffix} cannot hold)") from None
    finally:
        container.close()
        if out is not None:
            try:
                out.close()
            except av.FFmpegError:
                pass
        partial.unlink(missing_ok=True)


def _muxer(av, target: Path) -> str:
    """The container format for `target`'s suffix (PyAV guesses it from the name; the temp name
    keeps the suffix, this only turns an unknown suffix into a clear error)."""
    if target.suffix.lower() not in VIDEO_SUFFIXES:
        raise VideoError(f"{target}: write videos as {', '.join(VIDEO_SUFFIXES)}")
    return {".mkv": "matroska", ".m4v": "mp4", ".webm": "webm", ".avi": "avi", ".mov": "mov", ".mp4": "mp4"}[target.suffix.lower()]


def _add_video_stream(out, video_in, info: VideoInfo, choice: EncodeChoice):
    stream = out.add_stream(choice.codec, rate=info.rate)
    stream.width, stream.height, stream.pix_fmt = info.width, info.height, choice.pix_fmt
    stream.time_base = info.time_base
    ctx, src = stream.codec_context, video_in.codec_context
    ctx.time_base = info.time_base
    for name in ("color_range", "colorspace", "color_primaries", "color_trc"):
        try:
            setattr(ctx, name, getattr(src, name))
        except (AttributeError, ValueError, TypeError):
            pass
    if choice.codec in ("libx264", "libx265"):
        stream.options = {"crf": CRF}
    elif src.bit_rate:
        ctx.bit_rate = src.bit_rate
    stream.metadata.update({k: v for k, v in video_in.metadata.items() if k in ("language", "rotate", "title")})
    return stream


def _colour(ctx) -> dict:
    """The source's YUV matrix and range for the RGB -> YUV conversion (unspecified: swscale's
    default, the same one the decoder's conversion used)."""
    colour = {}
    if ctx.colorspace not in (None, 2):  # 2: AVCOL_SPC_UNSPECIFIED
        colour["dst_colorspace"] = ctx.colorspace
    if ctx.color_range:
        colour["dst_color_range"] = ctx.color_range
    return colour
