"""End to end in a real ComfyUI server (COMFYUI_DIR): the pack installed in a temporary
custom_nodes, full-size SD2.1-base stand-ins (random weights, real LDM keys, SD2's OpenCLIP-H
text encoder) and a LAFR file and a converted OSEDiff-face file in the model folders, `main.py
--cpu` on 127.0.0.1; every example workflow is converted to the API format with the server's own
/object_info, posted, and must write an image of the input's size (the video example: an
H.264 clip of a shaken photo in, every frame's face restored at the source's fps out); the OSEDiff-face workflow's
image (CLIP Text Encode -> conditioning, adain) must equal the standalone pipeline's; an
SD1.5-shaped checkpoint must fail with our message. Skipped when COMFYUI_DIR is unset.

    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest tests/host/test_comfyui_e2e.py
(the python must have ComfyUI's requirements installed)."""

from __future__ import annotations

import gc
import json
import shutil
import socket
import subprocess
import sys
import time
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from comfy_support import COMFYUI_DIR, REPO, import_comfy, needs_comfyui  # noqa: E402
from pack_fixtures import copy_pack, openclip_h14_text, write_stand_in_lafr, write_stand_in_osediff  # noqa: E402
from conftest import DATA_DIR  # noqa: E402

pytestmark = needs_comfyui
PACK_PARTS = ("__init__.py", "nodes", "lafr_core", "web", "example_workflows", "pyproject.toml", "requirements.txt")
CKPT, SD15_CKPT, LAFR, IMAGE = "v2-1_512-ema-pruned.safetensors", "sd15_stand_in.safetensors", "lafr.safetensors", "portrait.png"
OSEDIFF = "osediff_face.safetensors"
# LAFR_interlcm.json's file names
INTERLCM, INTERLCM_UNET, INTERLCM_VAE, INTERLCM_CLIP = ("interlcm_3step.safetensors", "lcm_dreamshaper_v7_unet.safetensors",
                                                        "lcm_dreamshaper_v7_vae.safetensors", "clip_vit_b16.safetensors")
VPRED_CKPT = "v2-1_768_v_stand_in.safetensors"
WIDGET_KINDS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port: int, path: str, payload: dict | None = None, timeout: float = 30):
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def install_pack(base: Path) -> None:
    copy_pack(base / "custom_nodes" / "ComfyUI-LAFR", PACK_PARTS)


def write_models(base: Path) -> None:
    from ldm_fixtures import sd21_ldm_checkpoint

    ckpts = base / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    # with SD2's text encoder, so Load Checkpoint gives a CLIP for CLIP Text Encode
    save_file({**sd21_ldm_checkpoint(), **openclip_h14_text(torch.Generator().manual_seed(0))}, str(ckpts / CKPT))
    save_file(sd21_ldm_checkpoint(sd15=True), str(ckpts / SD15_CKPT))
    save_file(sd21_ldm_checkpoint(v_prediction=True), str(ckpts / VPRED_CKPT))
    write_stand_in_lafr(base / "models" / "lafr" / LAFR)
    write_stand_in_osediff(base / "models" / "lafr" / OSEDIFF)
    write_interlcm_models(base)


def write_interlcm_models(base: Path) -> None:
    """LAFR_interlcm.json's files, full-size random weights of the real configs: LCM Dreamshaper
    v7's UNet (diffusers layout, with its guidance weight) and VAE, CLIP ViT-B/16, a converted
    3-step InterLCM file."""
    import shutil

    from interlcm_reference import random_clip_vision, write_encoders, write_lcm_folder

    from lafr_core.interlcm.convert import convert_interlcm

    build, models = base / "interlcm_build", base / "models"
    write_lcm_folder(build / "lcm", seed=0)
    for sub, folder, name in (("unet", "diffusion_models", INTERLCM_UNET), ("vae", "vae", INTERLCM_VAE)):
        (models / folder).mkdir(parents=True, exist_ok=True)
        shutil.move(build / "lcm" / sub / "diffusion_pytorch_model.safetensors", models / folder / name)
    (models / "clip_vision").mkdir(parents=True, exist_ok=True)
    clip = random_clip_vision(seed=2)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(models / "clip_vision" / INTERLCM_CLIP))  # a bare tower
    convert_interlcm(*write_encoders(build, 3, seed=3), models / "lafr" / INTERLCM)
    shutil.rmtree(build)


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """UI-format workflow -> API prompt, widget names taken from the server's node definitions."""
    links = {l[0]: l for l in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        info = object_info[node["type"]]
        inputs = {}
        for inp in node["inputs"]:
            if inp["link"] is None:  # an optional socket left unwired
                continue
            _, src, src_slot, *_ = links[inp["link"]]
            inputs[inp["name"]] = [str(src), src_slot]
        socket_names = {i["name"] for i in node["inputs"] if "widget" not in i}  # a linked widget keeps its value slot
        widget_names = []
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                if name not in socket_names and (isinstance(spec[0], list) or spec[0] in WIDGET_KINDS):
                    widget_names.append(name)
                    if len(spec) > 1 and spec[1].get("control_after_generate"):
                        widget_names.append(None)  # the frontend's value control: saved, never sent
        for name, value in zip(widget_names, node.get("widgets_values", [])):
            if name is not None:
                inputs.setdefault(name, value)  # the link wins (CreateVideo's fps from the source video)
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def run_prompt(port: int, prompt: dict, timeout: float = 900) -> dict:
    prompt_id = http(port, "/prompt", {"prompt": prompt})["prompt_id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = http(port, f"/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            return history[prompt_id]
        time.sleep(2)
    raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy")
    install_pack(base)
    write_models(base)
    (base / "input").mkdir()
    Image.open(DATA_DIR / "astronaut.png").convert("RGB").save(base / "input" / IMAGE)
    port = free_port()
    log = open(base / "server.log", "w")
    # --disable-smart-memory: ComfyUI unloads every model it may at each load (the memory cases
    # of test_comfyui_library, here through the server's own executor)
    proc = subprocess.Popen([sys.executable, "main.py", "--cpu", "--disable-smart-memory", "--listen", "127.0.0.1", "--port", str(port),
                             "--base-directory", str(base)], cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while True:
            try:
                object_info = http(port, "/object_info", timeout=10)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ComfyUI did not start:\n{(base / 'server.log').read_text()[-3000:]}")
                time.sleep(2)
        yield port, base, object_info
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def test_nodes_are_registered_with_their_names(server):
    _, base, info = server
    names = {k: v["display_name"] for k, v in info.items() if k.startswith("LAFR")}
    assert names == {"LAFRLoader": "LAFR Loader", "LAFRLatentAlign": "LAFR Latent Align",
                     "LAFRPrunedUNetStep": "LAFR Pruned UNet Step", "LAFRFaceDetectAlign": "LAFR Face Detect & Align",
                     "LAFRFacePasteBack": "Face Paste Back", "LAFRRestoreFaces": "LAFR Restore Faces", "LAFRVAE": "LAFR VAE"}
    assert info["LAFRLoader"]["input"]["required"]["lafr_name"][0] == [LAFR, OSEDIFF]  # not the InterLCM file
    assert {k: v["display_name"] for k, v in info.items() if k.startswith("InterLCM")} == {
        "InterLCMLoader": "InterLCM Loader", "InterLCMRestoreFaces": "InterLCM Restore Faces"}
    interlcm_inputs = info["InterLCMLoader"]["input"]["required"]
    assert interlcm_inputs["interlcm_name"][0] == [INTERLCM] and interlcm_inputs["clip_vision_name"][0] == [INTERLCM_CLIP]
    assert INTERLCM_UNET in interlcm_inputs["lcm_checkpoint"][0]
    ours = [line for line in (base / "server.log").read_text().splitlines() if "ComfyUI-LAFR" in line]
    assert ours and not any("IMPORT FAILED" in line for line in ours), ours


VIDEO_WORKFLOW, CLIP, CLIP_FRAMES, CLIP_FPS = "LAFR_video_frames.json", "lafr_video_frames.mp4", 6, 25


@pytest.mark.parametrize("workflow", sorted(p.name for p in (REPO / "example_workflows").glob("*.json") if p.name != VIDEO_WORKFLOW))
def test_example_workflow_runs_and_saves_an_image(server, workflow):
    port, base, info = server
    prompt = ui_to_api(json.loads((REPO / "example_workflows" / workflow).read_text()), info)
    result = run_prompt(port, prompt)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[-2000:]
    saved = [img for out in result["outputs"].values() for img in out.get("images", []) if img["type"] == "output"]
    assert saved, result["outputs"]
    path = base / "output" / saved[0]["subfolder"] / saved[0]["filename"]
    assert Image.open(path).size == Image.open(base / "input" / IMAGE).size


def osediff_pipeline_reference(base: Path, text: str, image: torch.Tensor):
    """The OSEDiff-face workflow computed without the server: `text` through ComfyUI's own CLIP of
    the checkpoint (what CLIP Text Encode runs), then the converted file on the standalone pipeline
    (diffusers modules, file merged in fp32) through lafr_core.host_chain with adain and the
    detector "auto" picks with the server's models/facedetection."""
    import dataclasses

    from lafr_core.host_chain import FaceOptions, restore_images
    from lafr_core.lafr_file import load_lafr
    from lafr_core.pipeline import LafrPipeline, load_sd21_from_single_file

    checkpoint = base / "models" / "checkpoints" / CKPT
    clip = import_comfy().load_checkpoint_guess_config(str(checkpoint), output_vae=False, output_model=False)[1]
    embeds = clip.encode_from_tokens(clip.tokenize(text)).float()
    del clip
    gc.collect()
    weights = dataclasses.replace(load_lafr(base / "models" / "lafr" / OSEDIFF), prompt_embeds=embeds)
    unet, vae = load_sd21_from_single_file(checkpoint)
    pipe = LafrPipeline.from_modules(unet.float(), vae.float(), weights, device="cpu", dtype=torch.float32)
    del unet, vae
    gc.collect()
    options = FaceOptions(detector_weights=base / "models" / "facedetection", colour_correction="adain")
    return restore_images(image, weights, pipe.host_model(), options)


def test_osediff_workflow_restores_the_face_as_the_standalone_pipeline_does(server):
    port, base, info = server
    prompt = ui_to_api(json.loads((REPO / "example_workflows" / "LAFR_osediff_face.json").read_text()), info)
    restore = next(k for k, v in prompt.items() if v["class_type"] == "LAFRRestoreFaces")
    assert prompt[restore]["inputs"]["colour_correction"] == "adain" and "conditioning" in prompt[restore]["inputs"]
    assert prompt[restore]["inputs"]["detector"] == "auto"  # the workflow as it is (cached when it ran above)
    text = next(v for v in prompt.values() if v["class_type"] == "CLIPTextEncode")["inputs"]["text"]
    result = run_prompt(port, prompt)  # the file has no prompt embedding: it runs only with the CONDITIONING
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[-2000:]
    image = next(img for out in result["outputs"].values() for img in out.get("images", []) if img["type"] == "output")
    saved = np.asarray(Image.open(base / "output" / image["subfolder"] / image["filename"]).convert("RGB")).astype(int)
    source = np.asarray(Image.open(base / "input" / IMAGE).convert("RGB"))

    reference = osediff_pipeline_reference(base, text, torch.from_numpy(source.astype(np.float32) / 255.0)[None])
    expected = np.clip(255.0 * reference.images[0].numpy(), 0, 255).astype(np.uint8).astype(int)  # SaveImage's rounding
    x1, y1, x2, y2 = reference.faces.boxes[0].round().long().tolist()
    face = (slice(y1, y2), slice(x1, x2))
    diff = np.abs(saved - expected)
    changed = float(np.abs(saved[face] - source[face]).mean())
    print(f"OSEDiff workflow vs pipeline: max {diff.max()} levels, mean {diff.mean():.4f}, >1 level {(diff > 1).mean():.5f}; "
          f"face changed by {changed:.1f} levels")
    assert len(reference.faces) == 1 and changed > 5, "the face was not restored"
    assert (saved == source).all(axis=-1).mean() > 0.5  # away from the face the photo is untouched
    assert diff.max() <= 2 and (diff > 1).mean() < 1e-3  # measured: 1 level at most (8-bit rounding)


def write_shaken_clip(path: Path) -> np.ndarray:
    """A short H.264 clip of a real photo (Grace Hopper at 0.45x in 192x192, a 2-px hand-held
    sway, sensor noise, JPEG), as a phone would hand it over; returns its frames [F, H, W, 3] uint8."""
    import av

    from face_fixtures import HAND_LANDMARKS, load_portrait
    from video_fixtures import degrade, render, shake_path, similarity

    source = load_portrait("grace_hopper.jpg")[0].numpy()
    centre = np.array(HAND_LANDMARKS["grace_hopper.jpg"], dtype=np.float64).mean(axis=0)
    sway, rng = shake_path(CLIP_FRAMES, 2.0, seed=1, min_period=60, max_period=180), np.random.default_rng(0)
    frames = np.stack([(degrade(render([(source, similarity(0.45, centre, (96 + dx, 100 + dy)), False)], (192, 192)), rng) * 255 + 0.5)
                       .astype(np.uint8) for dx, dy in sway])
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt, stream.options = 192, 192, "yuv420p", {"crf": "10"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return frames


def test_video_workflow_restores_every_frame_of_the_clip(server):
    """The video example as shipped (Load Video -> Get Video Components -> Restore Faces with
    temporal on -> Create Video at the source's fps -> Save Video) on a short shaken clip."""
    import av

    port, base, info = server
    write_shaken_clip(base / "input" / CLIP)
    prompt = ui_to_api(json.loads((REPO / "example_workflows" / VIDEO_WORKFLOW).read_text()), info)
    restore = next(v for v in prompt.values() if v["class_type"] == "LAFRRestoreFaces")
    assert restore["inputs"]["temporal"] is True and restore["inputs"]["image"][1] == 0
    result = run_prompt(port, prompt)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[-2000:]
    saved = [v for out in result["outputs"].values() for v in out.get("images", []) if v["type"] == "output"]
    assert len(saved) == 1 and saved[0]["filename"].endswith(".mp4"), result["outputs"]

    def decode(path: Path) -> tuple[float, np.ndarray]:
        with av.open(str(path)) as container:
            rate = float(container.streams.video[0].average_rate)
            return rate, np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(int)

    fps, out = decode(base / "output" / saved[0]["subfolder"] / saved[0]["filename"])
    frames = decode(base / "input" / CLIP)[1]  # what Load Video gave the graph
    assert out.shape == frames.shape == (CLIP_FRAMES, 192, 192, 3) and fps == CLIP_FPS
    face = (slice(None), slice(80, 120), slice(78, 114))  # between the eyes and the mouth, every frame
    corner = (slice(None), slice(0, 30), slice(0, 30))  # far from the face: Save Video's H.264 only
    changed, kept = np.abs(out[face] - frames[face]).mean(), np.abs(out[corner] - frames[corner]).mean()
    print(f"video workflow: face changed by {changed:.1f} levels, far corner by {kept:.1f} (codec only)")
    assert changed > 10 and changed > 3 * kept


@pytest.mark.parametrize("checkpoint, found", [(SD15_CKPT, "it is sd1.x"), (VPRED_CKPT, "it predicts v")])
def test_wrong_checkpoint_is_refused_with_our_message(server, checkpoint, found):
    port, _, info = server
    prompt = ui_to_api(json.loads((REPO / "example_workflows" / "LAFR_restore_faces.json").read_text()), info)
    loader = next(k for k, v in prompt.items() if v["class_type"] == "CheckpointLoaderSimple")
    prompt[loader]["inputs"]["ckpt_name"] = checkpoint
    result = run_prompt(port, prompt)
    assert result["status"]["status_str"] == "error"
    errors = [m[1] for m in result["status"]["messages"] if m[0] == "execution_error"]
    assert errors and "LAFR needs Stable Diffusion 2.1-base" in errors[0]["exception_message"]
    assert found in errors[0]["exception_message"]


PLAYWRIGHT_DIR = os.environ.get("PLAYWRIGHT_NODE_MODULES")  # a node_modules with playwright-core


@pytest.mark.skipif(not PLAYWRIGHT_DIR or not shutil.which("node") or not Path("/usr/bin/chromium").exists(),
                    reason="needs node, /usr/bin/chromium and PLAYWRIGHT_NODE_MODULES")
@pytest.mark.parametrize("workflow", ["LAFR_restore_faces.json", "LAFR_three_nodes.json"])
def test_frontend_shows_the_lafr_previews(server, workflow, tmp_path):
    """The real frontend loads the example workflow, runs it, and the LAFR preview widgets appear
    (before/after split; detected faces). The screenshot is kept next to the server log."""
    port, base, _ = server
    shot = base / f"screenshot_{Path(workflow).stem}.png"
    expected = 1 if workflow == "LAFR_restore_faces.json" else 2  # split view; + face overlay
    out = subprocess.run(["node", str(REPO / "tests" / "host" / "web_screenshot.mjs"), f"http://127.0.0.1:{port}/",
                          str(REPO / "example_workflows" / workflow), str(shot), str(expected)],
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    previews = json.loads(out.stdout.strip().splitlines()[-1])["previews"]
    assert previews == expected
    assert shot.stat().st_size > 10_000
