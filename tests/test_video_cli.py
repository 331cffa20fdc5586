"""`lafr restore clip.mp4 -o restored.mp4`: a real photo's face swaying in a 256 px H.264 clip
with an AAC track, restored by a deterministic stand-in (no models): the source's frame rate,
time base, time stamps, size and pixel format kept, audio packets byte for byte, faces
changed, temporal and per-frame modes differ; unreadable files and Ctrl-C leave nothing."""

from __future__ import annotations

import numpy as np
import pytest

av = pytest.importorskip("av")

from lafr_core.__main__ import build_parser  # noqa: E402
from lafr_core.restore_cli import main  # noqa: E402
from video_cli_fixtures import NTSC, audio_packets, stand_in_restorer, video_frames, write_clip  # noqa: E402

FRAMES = 30
FACE = (slice(95, 185), slice(85, 170))  # rows, cols holding Grace's inner face in every frame
CORNER = (slice(0, 40), slice(0, 40))  # far from the face: only the codec touches it


def run_cli(argv, restorer):
    return main(build_parser().parse_args(["restore", *argv]), restorer=restorer)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=FRAMES)


@pytest.fixture(scope="module")
def restored(clip, tmp_path_factory):
    """The clip restored in both modes (each run once for the module)."""
    out = tmp_path_factory.mktemp("out")
    paths = {}
    for mode in ("temporal", "no-temporal"):
        paths[mode] = out / f"{mode}.mp4"
        assert run_cli([str(clip), "-o", str(paths[mode]), "--detector", "mtcnn", f"--{mode}"], stand_in_restorer()) == 0
    return paths


def stream_params(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = [f.pts for f in container.decode(stream)]
        ctx = stream.codec_context
        return dict(rate=stream.average_rate, time_base=stream.time_base, size=(ctx.width, ctx.height),
                    pix_fmt=ctx.pix_fmt, codec=ctx.name, pts=pts, audio=len(container.streams.audio))


def test_video_keeps_timing_size_format_and_audio(clip, restored, capsys):
    source = stream_params(clip)
    assert source["rate"] == NTSC and len(source["pts"]) == FRAMES and source["audio"] == 1
    for path in restored.values():
        assert stream_params(path) == source  # rate, time base, every time stamp, size, yuv420p, h264, one audio stream
        assert audio_packets(path) == audio_packets(clip)  # remuxed: same payloads, pts and durations
    assert not [p for p in restored["temporal"].parent.iterdir() if "partial" in p.name]


def test_faces_change_and_temporal_differs_from_per_frame(clip, restored):
    before = video_frames(clip).astype(np.float32)
    temporal = video_frames(restored["temporal"]).astype(np.float32)
    per_frame = video_frames(restored["no-temporal"]).astype(np.float32)
    assert np.abs(temporal - before)[:, FACE[0], FACE[1]].mean() > 8  # the stand-in dims faces by 30%
    corner = (temporal - before)[:, CORNER[0], CORNER[1]]
    assert np.abs(corner).mean() < 2.5 and abs(corner.mean()) < 0.5  # only re-encoded (CRF 18 on noise), no colour shift
    assert np.abs(temporal - per_frame)[:, FACE[0], FACE[1]].mean() > 0.5  # smoothed landmarks move crop and mask
    # the stand-in's texture sits on the crop grid: a steadier alignment flickers less frame to frame
    flicker = {name: np.abs(np.diff(x[:, FACE[0], FACE[1]], axis=0)).mean() for name, x in
               (("temporal", temporal), ("per_frame", per_frame))}
    assert flicker["temporal"] < flicker["per_frame"], flicker


def test_unreadable_files_are_named_and_nothing_is_written(tmp_path, clip, capsys):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(20_000))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 3])  # mp4 index (moov) lost
    sound = tmp_path / "sound.mkv"
    with av.open(str(sound), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    out_dir = tmp_path / "out"
    assert run_cli([str(junk), str(truncated), str(sound), "-o", str(out_dir)], stand_in_restorer()) == 1
    log = capsys.readouterr().out
    assert f"{junk}: ERROR not a readable video" in log
    assert f"{truncated}: ERROR" in log
    assert f"{sound}: ERROR no video stream in this file" in log
    assert not out_dir.exists() or not list(out_dir.iterdir())


def test_ctrl_c_leaves_no_output_and_keeps_an_earlier_file(tmp_path, clip, capsys):
    calls = []

    def interrupting(decode):
        def wrapped(raw):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return decode(raw)
        return wrapped

    restorer = stand_in_restorer(wrap_decode=interrupting)

    target = tmp_path / "restored.mp4"
    assert run_cli([str(clip), "-o", str(target), "--detector", "mtcnn", "--window", "4", "--no-temporal"],
                   restorer) == 130
    assert "interrupted" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # neither the video nor its temporary file
    target.write_bytes(b"an earlier result")
    calls.clear()
    assert run_cli([str(clip), "-o", str(target), "--detector", "mtcnn", "--window", "4", "--no-temporal"],
                   restorer) == 130
    assert target.read_bytes() == b"an earlier result" and list(tmp_path.iterdir()) == [target]


def test_output_kind_must_match_the_input(tmp_path, clip, capsys):
    assert run_cli([str(clip), "-o", str(tmp_path / "x.png")], stand_in_restorer()) == 1
    assert "is a video; give -o a video file" in capsys.readouterr().out


def test_encoder_choice_keeps_codec_and_format_or_says_why_not(clip):
    from dataclasses import replace as evolve

    from lafr_core.video.io import EncodeChoice, choose_encoder, probe

    info = probe(clip)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    assert choose_encoder(info) == EncodeChoice("libx264", "yuv420p", None)  # h264's encoder here, no note
    mpeg4_444 = choose_encoder(evolve(info, codec="mpeg4", pix_fmt="yuv444p"))  # mpeg4 encodes 4:2:0 only
    assert (mpeg4_444.codec, mpeg4_444.pix_fmt) == ("libx264", "yuv444p")  # chroma kept by the fallback
    assert mpeg4_444.note == "'mpeg4' cannot encode yuv444p: written as H.264 (libx264, yuv444p, CRF 18)"
    unknown = choose_encoder(evolve(info, codec="no-such-codec", pix_fmt="pal8"))
    assert (unknown.codec, unknown.pix_fmt) == ("libx264", "yuv420p") and "cannot encode 'no-such-codec'" in unknown.note
