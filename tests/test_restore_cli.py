"""`python -m lafr_core restore`: end to end with a tiny LAFR pipeline injected, and the
no-weights path in a subprocess (detects, writes the preview, says what is missing and where)."""

import shutil
import subprocess
import sys
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import cli_fixtures
from conftest import REPO
from face_fixtures import DATA, compose_canvas
from lafr_core.__main__ import build_parser
from lafr_core.host_chain import HostModel
from lafr_core.lafr_file import LafrWeights
from lafr_core.restore_cli import EXIT_MISSING_WEIGHTS, Restorer, main, select_argument


@pytest.fixture(scope="module")
def tiny_pipeline():
    """LafrPipeline on tiny random diffusers models (VAE 8x down: 512 crops -> 64x64 latents)."""
    return cli_fixtures.tiny_pipeline()


def recording(weights, host):
    """A Restorer on `host` whose `calls` lists the shape of every batch of crops it encodes."""
    calls = []

    def encode(crops):
        calls.append(tuple(crops.shape))
        return host.encode(crops)

    restorer = Restorer.lafr(weights, replace(host, encode=encode))
    return restorer, calls


@pytest.fixture
def tiny_restore(tiny_pipeline):
    weights, pipe = tiny_pipeline
    return recording(weights, pipe.host_model())


def passthrough():
    """A Restorer whose 'VAE' and 'UNet' hand the crops back (no adapter): only the flow is tested."""
    weights = LafrWeights(aligner=None, kohya_lora=None, prompt_embeds=torch.zeros(1, 77, 32), meta={"lafr.stages": "2"})
    host = HostModel(encode=lambda crops: crops, denoise=lambda z: z, decode=lambda raw: raw, device=torch.device("cpu"))
    return recording(weights, host)


def run_cli(argv, restorer):
    return main(build_parser().parse_args(["restore", *argv]), restorer=restorer)


def sixteen_bit_rgba(path):
    """The astronaut as a 16-bit RGBA PNG with an alpha ramp (BGRA on disk, as OpenCV writes)."""
    rgb = np.asarray(Image.open(DATA / "astronaut.png").convert("RGB")).astype(np.uint16) * 257
    rgb = rgb + np.arange(512, dtype=np.uint16)[None, :, None] % 200  # below 8-bit precision
    alpha = np.tile(np.linspace(0, 65535, 512).astype(np.uint16)[None, :], (512, 1))[..., None]
    bgra = np.concatenate([rgb[..., ::-1], alpha], axis=-1)
    cv2.imwrite(str(path), bgra)
    return bgra


def test_restore_end_to_end_keeps_formats_and_passes_faceless_images(tmp_path, tiny_restore, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(DATA / "astronaut.png", inputs)
    shutil.copy(DATA / "grace_hopper.jpg", inputs)
    Image.new("RGB", (97, 61), (120, 120, 120)).save(inputs / "blank.png")
    bgra = sixteen_bit_rgba(inputs / "rgba16.png")
    out = tmp_path / "out"
    restorer, calls = tiny_restore
    rc = run_cli([str(inputs), "-o", str(out), "--detector", "mtcnn", "--save-crops", "--save-preview",
                  "--colour-correction", "wavelet"], restorer)
    assert rc == 0
    log = capsys.readouterr().out
    assert "blank.png: 0 faces" in log and "no face: copied unchanged" in log
    assert (out / "blank.png").read_bytes() == (inputs / "blank.png").read_bytes()
    assert calls == [(1, 512, 512, 3)] * 3  # one batched call per photo with a face

    # 8-bit RGB PNG: the face changed, far from it every pixel is exactly the input's
    before = np.asarray(Image.open(inputs / "astronaut.png"))
    after = np.asarray(Image.open(out / "astronaut.png"))
    assert after.shape == before.shape and after.dtype == np.uint8
    assert np.abs(after[100:150, 200:250].astype(int) - before[100:150, 200:250]).mean() > 2
    assert np.array_equal(after[300:, :], before[300:, :])
    # JPEG stays JPEG, same size
    with Image.open(out / "grace_hopper.jpg") as jpg:
        assert jpg.format == "JPEG" and jpg.size == (512, 600)
    # 16-bit RGBA: still 16-bit, alpha identical, untouched pixels identical
    result = cv2.imread(str(out / "rgba16.png"), cv2.IMREAD_UNCHANGED)
    assert result.dtype == np.uint16 and result.shape == bgra.shape
    assert np.array_equal(result[..., 3], bgra[..., 3])
    assert np.array_equal(result[300:], bgra[300:])
    # extras
    assert Image.open(out / "astronaut.face0.png").size == (512, 512)
    assert Image.open(out / "astronaut.face0.restored.png").size == (512, 512)
    with Image.open(out / "astronaut.preview.png") as preview:
        assert preview.width >= 2 * 512 and preview.height > 512  # input | output, crops below


def test_selection_and_min_size_reach_the_restorer(tmp_path, capsys):
    canvas = (compose_canvas()[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(canvas).save(tmp_path / "group.png")
    identity, calls = passthrough()
    assert run_cli([str(tmp_path / "group.png"), "-o", str(tmp_path / "a"), "--detector", "mtcnn", "--select", "largest"], identity) == 0
    assert run_cli([str(tmp_path / "group.png"), "-o", str(tmp_path / "b"), "--detector", "mtcnn", "--min-size", "150"], identity) == 0
    seen = [shape[0] for shape in calls]
    assert seen == [1, 2]
    assert "2 faces, 2 too small skipped" in capsys.readouterr().out


def test_unreadable_input_is_reported_and_the_others_still_run(tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    shutil.copy(DATA / "astronaut.png", tmp_path)
    rc = run_cli([str(tmp_path / "broken.png"), str(tmp_path / "astronaut.png"), "-o", str(tmp_path / "out")], passthrough()[0])
    assert rc == 1
    log = capsys.readouterr().out
    assert "broken.png: ERROR" in log and "not a readable image" in log
    assert (tmp_path / "out" / "astronaut.png").is_file()


def test_refuses_to_overwrite_inputs_and_bad_select(tmp_path, capsys):
    shutil.copy(DATA / "astronaut.png", tmp_path)
    assert run_cli([str(tmp_path / "astronaut.png"), "-o", str(tmp_path)], passthrough()[0]) == 1
    assert "would overwrite its input" in capsys.readouterr().out
    assert select_argument("0, 2") == (0, 2) and select_argument("largest") == "largest"
    with pytest.raises(Exception, match="--select takes"):
        select_argument("biggest")
    with pytest.raises(SystemExit):  # argparse shows the message and exits 2
        build_parser().parse_args(["restore", "photo.png", "-o", "out", "--select", "biggest"])
    assert "--select takes 'all', 'largest' or face indices" in capsys.readouterr().err


def test_mtcnn_ignores_a_retinaface_weights_file_and_parsenet_mask_needs_its_weights(tmp_path, comfy_home, capsys):
    """The chain's guard: --detector-weights may name a RetinaFace file; MTCNN must not get it. The
    ParseNet mask (pasted by the chain) still looks for its own weights."""
    shutil.copy(DATA / "astronaut.png", tmp_path)
    retinaface = tmp_path / "detection_Resnet50_Final.pth"
    retinaface.write_bytes(b"not read by mtcnn")
    restorer, calls = passthrough()
    argv = [str(tmp_path / "astronaut.png"), "-o", str(tmp_path / "out"), "--detector", "mtcnn", "--detector-weights", str(retinaface)]
    assert run_cli(argv, restorer) == 0
    assert calls == [(1, 512, 512, 3)] and "astronaut.png: 1 face" in capsys.readouterr().out
    assert run_cli([str(tmp_path / "astronaut.png"), "-o", str(tmp_path / "masked"), "--detector", "mtcnn", "--mask", "parsenet"], restorer) == 1
    assert "parsing_parsenet.pth not found" in capsys.readouterr().out


def test_without_weights_it_previews_and_names_what_is_missing(tmp_path):
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "lafr_core", "restore", str(DATA / "astronaut.png"), "-o", str(out),
                           "--detector", "mtcnn"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == EXIT_MISSING_WEIGHTS, proc.stderr
    text = proc.stdout
    assert "astronaut.png: 1 face" in text
    assert "SD2.1-base weights: none found" in text and "LAFR weights: none found" in text
    for folder in ("ComfyUI/models/checkpoints", "stable-diffusion-webui/models/Stable-diffusion",
                   "ComfyUI/models/lafr", "stable-diffusion-webui/models/LAFR", ".cache/huggingface/hub"):
        assert str(tmp_path / folder) in text, folder
    assert "LAFR_BASE_MODEL (not set)" in text and "LAFR_MODEL (not set)" in text
    assert (out / "astronaut.preview.png").is_file()
    assert not (out / "astronaut.png").exists()  # nothing restored, nothing pretending to be


def test_prompt_replaces_the_files_prompt_through_the_base_text_encoder(tmp_path, monkeypatch, capsys):
    """--prompt: the text through the base's own tokenizer and text encoder (a diffusers folder),
    folded into the UNet step instead of the file's embedding; a single-file base has no text
    encoder: one clear line, nothing written. Models: tiny random ones in place of SD2.1."""
    from transformers import CLIPTextConfig, CLIPTextModel

    import lafr_core.lafr_file
    import lafr_core.pipeline
    from conftest import build_unet, tiny_unet_config
    from lafr_core.pipeline import LafrPipeline
    from lafr_core.text_encoder import encode_prompt
    from osediff_fixtures import write_tokenizer
    from test_pipeline import tiny_weights

    base = tmp_path / "sd21"
    write_tokenizer(base / "tokenizer")
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, max_position_embeddings=77)).save_pretrained(base / "text_encoder")
    lafr = tmp_path / "tiny.safetensors"
    lafr.write_bytes(b"read by the stand-in loader")
    monkeypatch.setattr(lafr_core.lafr_file, "load_lafr", lambda path: tiny_weights()[0])
    monkeypatch.setattr(lafr_core.pipeline, "load_sd21", lambda source: (build_unet(tiny_unet_config()), cli_fixtures.tiny_vae()))
    seen = []
    from_modules = LafrPipeline.from_modules.__func__

    def recording_from_modules(cls, *args, **kwargs):
        seen.append(kwargs.get("prompt_embeds"))
        return from_modules(cls, *args, **kwargs)

    monkeypatch.setattr(LafrPipeline, "from_modules", classmethod(recording_from_modules))
    photo = shutil.copy(DATA / "astronaut.png", tmp_path)
    common = ["--base", str(base), "--lafr", str(lafr), "--detector", "mtcnn"]
    assert main(build_parser().parse_args(["restore", photo, "-o", str(tmp_path / "file_prompt"), *common])) == 0
    assert seen == [None]  # the file's own embedding
    text = "an old man, smiling"
    assert main(build_parser().parse_args(["restore", photo, "-o", str(tmp_path / "own_prompt"), *common, "--prompt", text])) == 0
    assert torch.equal(seen[1], encode_prompt(base, text)) and seen[1].shape == (1, 77, 32)
    a = np.asarray(Image.open(tmp_path / "file_prompt" / "astronaut.png"), dtype=np.float32)
    b = np.asarray(Image.open(tmp_path / "own_prompt" / "astronaut.png"), dtype=np.float32)
    assert np.abs(a - b)[100:200, 180:280].mean() > 0.5  # the face differs: another prompt
    capsys.readouterr()

    single = tmp_path / "v2-1_512-ema-pruned.safetensors"
    single.write_bytes(b"x")
    argv = ["restore", photo, "-o", str(tmp_path / "none"), "--base", str(single), "--lafr", str(lafr), "--prompt", text]
    assert main(build_parser().parse_args(argv)) == 1
    assert "error: --prompt needs SD2.1's text encoder: " in (out := capsys.readouterr().out)
    assert "single-file checkpoint: it holds no tokenizer" in out
    assert not (tmp_path / "none").exists()
