"""Video files for the `lafr restore clip.mp4` tests and bench: a real photo's face swaying in a
small frame (tests/video_fixtures.py renders it; sensor noise and JPEG per frame) encoded with
PyAV, with an AAC sine track; and a deterministic stand-in Restorer whose output depends on
where the crop puts the face (a fixed texture on the crop grid), so alignment jitter shows."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from face_fixtures import HAND_LANDMARKS, load_portrait
from lafr_core.host_chain import HostModel
from lafr_core.lafr_file import LafrWeights
from lafr_core.restore_cli import Restorer
from video_fixtures import degrade, render, shake_path, similarity

NTSC = Fraction(30000, 1001)
SAMPLE_RATE = 44100


def clip_frames(frames: int, size: int = 256, seed: int = 0):
    """[size, size, 3] uint8 frames: grace_hopper.jpg at 0.45 x size/256 with a 2 px sway."""
    image = load_portrait("grace_hopper.jpg")[0].numpy()
    centre = np.array(HAND_LANDMARKS["grace_hopper.jpg"], dtype=np.float64).mean(axis=0)
    sway = shake_path(max(frames, 2), 2.0, seed + 1)
    rng = np.random.default_rng(seed)
    scale = size / 256
    for t in range(frames):
        affine = similarity(0.45 * scale, centre, (128 * scale + sway[t, 0], 136 * scale + sway[t, 1]))
        frame = degrade(render([(image, affine, False)], (size, size)), rng)
        yield (frame * 255 + 0.5).astype(np.uint8)


def write_clip(path: Path, frames: int = 30, size: int = 256, rate: Fraction = NTSC, audio: bool = True,
               codec: str = "libx264", pix_fmt: str = "yuv420p") -> Path:
    """Encode the swaying-face clip (and `frames / rate` seconds of a 440 Hz stereo AAC tone)."""
    import av

    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=rate)
        video.width = video.height = size
        video.pix_fmt = pix_fmt
        sound = out.add_stream("aac", rate=SAMPLE_RATE, layout="stereo") if audio else None
        for i, pixels in enumerate(clip_frames(frames, size)):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            samples = int(SAMPLE_RATE * frames / rate)
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / SAMPLE_RATE)).astype(np.float32)
            for start in range(0, samples, 1024):
                part = np.ascontiguousarray(np.stack([tone[start : start + 1024]] * 2))
                chunk = av.AudioFrame.from_ndarray(part, format="fltp", layout="stereo")
                chunk.sample_rate, chunk.pts = SAMPLE_RATE, start
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return path


def stand_in_restorer(crop: int = 512, wrap_decode=None) -> Restorer:
    """A Restorer without models: 'VAE' and 'UNet' pass the crop through, the 'decode' dims it
    and adds a fixed smooth texture in crop coordinates (deterministic, cheap, visible).
    `wrap_decode(decode)` -> the decode the host uses (to inject a Ctrl-C)."""
    y, x = torch.meshgrid(torch.arange(crop), torch.arange(crop), indexing="ij")
    texture = (0.15 * torch.sin(x / crop * 12.0) * torch.cos(y / crop * 9.0))[..., None]
    weights = LafrWeights(aligner=None, kohya_lora=None, prompt_embeds=torch.zeros(1, 77, 32), meta={"lafr.stages": "2"})

    def decode(raw: torch.Tensor) -> torch.Tensor:
        return (raw * 0.7 + 0.1 + texture.to(raw.device)[: raw.shape[1], : raw.shape[2]]).clamp(0, 1)

    host = HostModel(encode=lambda crops: crops, denoise=lambda z: z, decode=wrap_decode(decode) if wrap_decode else decode,
                     device=torch.device("cpu"))
    return Restorer.lafr(weights, host)


def video_frames(path: Path) -> np.ndarray:
    """[T, H, W, 3] uint8: every decoded frame of the first video stream."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def audio_packets(path: Path) -> list[tuple[int, int, bytes]]:
    """(pts, duration, payload) of every audio packet: what a remux must keep byte for byte."""
    import av

    with av.open(str(path)) as container:
        return [(p.pts, p.duration, bytes(p)) for p in container.demux(audio=0) if p.dts is not None]
