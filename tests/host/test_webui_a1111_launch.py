"""The extension in a real AUTOMATIC1111 launch, driven over HTTP as a user's browser or script does.

A1111's own `launch.py` starts with `--api --listen` bound to 127.0.0.1 (`--server-name`), CPU only,
a temporary `--data-dir` holding a copy of this extension and full-size stand-in checkpoints
(random weights, the real LDM key names and shapes, text encoders included as in the released
files): SD2.1-base (with `v2-inference.yaml` beside it as `<name>.yaml`, which CPU-only A1111
needs for SD2: its v-prediction probe fails there) and SD1.5 (its CLIP text config and tokenizer
written locally, since nothing is downloaded), plus a LAFR file for the SD2.1 UNet. Then:
  * LAFR is a face restorer, chosen through /sdapi/v1/options with its settings;
  * /sdapi/v1/img2img with restore_faces changes only the face box and says "Face restoration:
    LAFR" in the infotext; without a face it says so in the console;
  * the Extras tab's own call (gradio's /run/predict for the "Generate" button, every
    postprocessing script's inputs, as the page sends them): LAFR restores the face and writes its
    infotext; with a missing LAFR file the image passes through with one console line, no
    traceback, and the later "Create flipped copies" script still adds its copy to the gallery;
    without a face the infotext says so. /sdapi/v1/extra-single-image in v1.10.1 only passes
    Upscale/GFPGAN/CodeFormer arguments (postprocessing.run_extras), so there LAFR stays off;
  * after switching to the SD1.5 checkpoint the image passes through with one message.
A random-weight model cannot draw a face, so a test-only extension stands in for the sampler's
output: its postprocess_batch_list hands img2img's init image on as the decoded sample. Everything
else is A1111's: its processing loop calls face_restoration.restore_faces, which runs LAFR on the
loaded LatentDiffusion (VAE, UNet through apply_model, the LoRA as hooks).

Skipped unless A1111_DIR names an A1111 tree with its repositories/ (v1.10.1 checked). A1111 runs
with A1111_PYTHON (default: A1111_DIR/venv/bin/python, else this python); this python needs the
project's test requirements (diffusers writes the stand-ins). Builds full-size models (~9 GB RAM):

    A1111_DIR=/path/to/stable-diffusion-webui A1111_PYTHON=/path/to/webui-venv/bin/python \\
        python -m pytest tests/host/test_webui_a1111_launch.py
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import DATA_DIR  # noqa: E402
from pack_fixtures import clip_l14_text, copy_pack, openclip_h14_text, write_stand_in_lafr  # noqa: E402

A1111_DIR = os.environ.get("A1111_DIR")
pytestmark = pytest.mark.skipif(not A1111_DIR, reason="set A1111_DIR to an AUTOMATIC1111 tree (and A1111_PYTHON to its python)")

EXTENSION_PARTS = ("scripts", "lafr_webui", "lafr_core", "install.py", "requirements.txt", "LICENSE")
SD21, SD15, LAFR = "sd21_stand_in", "sd15_stand_in", "stand_in.safetensors"
STARTUP_S, REQUEST_S = 900, 900
FACE = (slice(90, 150), slice(195, 255))  # eyes, nose and mouth of astronaut.png (as in the unit tests)
# where restoring that face may change pixels: A1111 v1.10.1 changed rows 63..172, columns 175..276
# (the feathered paste-back of the MTCNN face), here with a 40 px margin; everything else must stay
FACE_WINDOW = (slice(23, 213), slice(135, 317))
SAMPLE_STAND_IN = '''
"""Test-only: a random-weight model draws no face, so img2img's init image stands in for the decoded sample."""
import numpy as np
import torch
from modules import scripts


class SampleStandIn(scripts.Script):
    def title(self):
        return "LAFR test: sampler stand-in"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        init = getattr(p, "init_images", None)
        if not init:
            return
        image = np.asarray(init[0].convert("RGB").resize((p.width, p.height)), dtype=np.float32)
        sample = torch.from_numpy((image + 0.5) / 255.0).permute(2, 0, 1)  # 255 * x truncates back to the byte
        pp.images[:] = [sample.clone() for _ in pp.images]
'''


# ----------------------------------------------------------------------------- stand-in models


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte <-> printable character table (what the BPE vocabulary is written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_folder(folder: Path, bpe_gz: Path) -> None:
    """openai/clip-vit-large-patch14's text config and tokenizer files, made locally: the
    vocabulary and merges are the CLIP BPE that open_clip ships (the same 49408 tokens)."""
    folder.mkdir(parents=True)
    merges = gzip.open(bpe_gz).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 77, "do_lower_case": True, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "clip_text_model", "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
        "projection_dim": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}))


def write_models(data: Path, a1111: Path, python: str) -> None:
    from safetensors.torch import save_file

    from ldm_fixtures import sd21_ldm_checkpoint

    ckpts = data / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    save_file({**sd21_ldm_checkpoint(), **openclip_h14_text(gen)}, str(ckpts / f"{SD21}.safetensors"))
    shutil.copy(a1111 / "repositories/stable-diffusion-stability-ai/configs/stable-diffusion/v2-inference.yaml", ckpts / f"{SD21}.yaml")
    save_file({**sd21_ldm_checkpoint(sd15=True), **clip_l14_text(gen)}, str(ckpts / f"{SD15}.safetensors"))
    bpe = subprocess.run([python, "-c", "import open_clip.tokenizer as t; print(t.default_bpe())"], capture_output=True,
                         text=True, timeout=300, check=True).stdout.strip().splitlines()[-1]
    clip_folder = data / "clip-vit-large-patch14"
    write_clip_folder(clip_folder, Path(bpe))
    v1 = (a1111 / "configs" / "v1-inference.yaml").read_text()
    target = "target: ldm.modules.encoders.modules.FrozenCLIPEmbedder"
    assert v1.count(target) == 1
    indent = re.search(r"\n( *)" + re.escape(target), v1)[1]
    (ckpts / f"{SD15}.yaml").write_text(v1.replace(target, f"{target}\n{indent}params:\n{indent}  version: {clip_folder}"))

    write_stand_in_lafr(data / "models" / "LAFR" / LAFR)


def install_extensions(data: Path) -> None:
    copy_pack(data / "extensions" / "ComfyUI-LAFR", EXTENSION_PARTS)
    stand_in = data / "extensions" / "lafr-test-sample-stand-in" / "scripts"
    stand_in.mkdir(parents=True)
    (stand_in / "sample_stand_in.py").write_text(SAMPLE_STAND_IN)


# ----------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Webui:
    """The running server: HTTP helpers and its console log."""

    def __init__(self, port: int, data: Path, log: Path, proc: subprocess.Popen):
        self.port, self.data, self.log_path, self.proc = port, data, log, proc

    def call(self, path: str, payload: dict | None = None, timeout: float = REQUEST_S, raw: bool = False):
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
        return body if raw else json.loads(body)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_since(self, offset: int) -> str:
        return self.log()[offset:]


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    a1111 = Path(A1111_DIR).resolve()
    default_python = a1111 / "venv" / "bin" / "python"
    python = os.environ.get("A1111_PYTHON") or (str(default_python) if default_python.exists() else sys.executable)
    data = tmp_path_factory.mktemp("a1111-data")
    started = time.time()
    write_models(data, a1111, python)
    install_extensions(data)
    port = free_port()
    log_path = data / "webui.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONUNBUFFERED": "1"}
    args = [python, "launch.py", "--skip-torch-cuda-test", "--use-cpu", "all", "--no-half", "--skip-prepare-environment",
            "--skip-install", "--api", "--listen", "--server-name", "127.0.0.1", "--port", str(port), "--data-dir", str(data),
            "--ckpt", str(data / "models" / "Stable-diffusion" / f"{SD21}.safetensors"), "--no-download-sd-model"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=a1111, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Webui(port, data, log_path, proc)
    try:
        deadline = time.time() + STARTUP_S
        while True:
            try:
                server.call("/sdapi/v1/options", timeout=10)
                break
            except (OSError, urllib.error.URLError):
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"A1111 did not start in {STARTUP_S} s:\n{server.log()[-5000:]}")
                time.sleep(3)
        server.startup_s = time.time() - started
        yield server
    finally:
        status = Path(f"/proc/{proc.pid}/status")
        peak = re.search(r"VmHWM:\s+(\d+) kB", status.read_text()) if status.exists() else None
        if peak:
            print(f"A1111 peak memory: {int(peak[1]) / 2**20:.1f} GiB")
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)


# ----------------------------------------------------------------------------- helpers


def b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def from_b64(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text.split(",", 1)[-1])))


def portrait() -> Image.Image:
    return Image.open(DATA_DIR / "astronaut.png").convert("RGB")


def changed_outside(out: np.ndarray, before: np.ndarray, window=FACE_WINDOW) -> int:
    """Pixels that differ outside the face's paste-back window."""
    diff = np.any(out[..., :3] != before[..., :3], axis=-1)
    diff[window] = False
    return int(diff.sum())


def img2img(webui: Webui, image: Image.Image, restore_faces: bool = True) -> tuple[np.ndarray, str]:
    result = webui.call("/sdapi/v1/img2img", {
        "init_images": [b64_png(image)], "prompt": "", "steps": 2, "denoising_strength": 0.5, "cfg_scale": 1.0,
        "sampler_name": "Euler", "seed": 1, "width": image.width, "height": image.height, "restore_faces": restore_faces,
    })
    assert len(result["images"]) == 1
    return np.asarray(from_b64(result["images"][0]).convert("RGB")), json.loads(result["info"])["infotexts"][0]


class ExtrasTab:
    """The Extras tab's "Generate" click as the page sends it: gradio's /run/predict with the
    click's fn_index and one value per input component (each script's defaults from /config)."""

    def __init__(self, webui: Webui):
        self.webui = webui
        config = webui.call("/config")
        self.components = {c["id"]: c for c in config["components"]}
        button = self._id(elem_id="extras_generate")
        matches = [i for i, dep in enumerate(config["dependencies"])
                   if button in dep["targets"] and dep.get("trigger", "click") == "click" and dep["backend_fn"]]
        assert len(matches) == 1, matches
        self.fn_index = matches[0]
        self.inputs = config["dependencies"][self.fn_index]["inputs"]

    def _id(self, elem_id: str | None = None, label: str | None = None, kind: str | None = None) -> int:
        found = [i for i, c in self.components.items()
                 if (elem_id is None or c.get("props", {}).get("elem_id") == elem_id)
                 and (label is None or c.get("props", {}).get("label") == label)
                 and (kind is None or c.get("type") == kind)]
        assert len(found) == 1, (elem_id, label, kind, found)
        return found[0]

    def run(self, image: Image.Image, lafr: dict, flipped_copy: bool = False) -> tuple[list[Image.Image], str]:
        values = {i: self.components[i].get("props", {}).get("value") for i in self.inputs}
        values[self.inputs[0]] = f"task(lafr-test-{time.time_ns()})"  # the page's id_task
        values[self.inputs[1]] = 0  # the Single Image tab
        values[self._id(elem_id="extras_image")] = "data:image/png;base64," + b64_png(image)
        values[self._id(elem_id="extras_lafr-checkbox")] = lafr.get("enable", True)
        values[self._id(elem_id="extras_lafr_visibility")] = lafr.get("visibility", 1.0)
        values[self._id(elem_id="extras_lafr_file")] = lafr.get("lafr_file", "Use settings")
        values[self._id(label="Create flipped copies", kind="checkbox")] = flipped_copy
        assert set(values) == set(self.inputs)
        result = self.webui.call("/run/predict", {"fn_index": self.fn_index, "data": [values[i] for i in self.inputs],
                                                  "session_hash": "lafrtest"})
        gallery, info_html = result["data"][0], result["data"][1]
        return [self._fetch(item) for item in gallery or []], info_html

    def _fetch(self, item) -> Image.Image:
        entry = item[0] if isinstance(item, (list, tuple)) else item
        if entry.get("data"):
            return from_b64(entry["data"])
        body = self.webui.call(f"/file={entry['name']}", raw=True)
        return Image.open(io.BytesIO(body))


@pytest.fixture(scope="module")
def extras(webui):
    return ExtrasTab(webui)


@pytest.fixture(scope="module")
def lafr_chosen(webui):
    webui.call("/sdapi/v1/options", {"face_restoration_model": "LAFR", "lafr_detector": "mtcnn"})
    return webui


# ----------------------------------------------------------------------------- the checks (file order matters:
# the SD1.5 switch comes last)


def test_the_server_listens_on_loopback_only(webui):
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.rsplit(":", 1)
            if state == "0A" and int(port, 16) == webui.port:  # 0A = LISTEN
                listening.append(address)
    if not listening:
        pytest.skip("no /proc/net/tcp here")
    assert listening == ["0100007F"], listening  # 127.0.0.1, nothing else
    print(f"A1111 started in {webui.startup_s:.0f} s (models written, launch, UI built, API up)")


def test_lafr_is_a_face_restorer_with_its_settings(webui, lafr_chosen):
    names = [r["name"] for r in webui.call("/sdapi/v1/face-restorers")]
    assert names.count("LAFR") == 1, names
    options = webui.call("/sdapi/v1/options")
    assert options["face_restoration_model"] == "LAFR" and options["lafr_detector"] == "mtcnn"
    assert {k: options[k] for k in ("lafr_file", "lafr_strength", "lafr_colour_correction")} == {
        "lafr_file": "Automatic", "lafr_strength": 1.0, "lafr_colour_correction": "none"}
    assert (webui.data / "models" / "LAFR" / LAFR).is_file()


def test_img2img_restore_faces_changes_only_the_face_box(webui, lafr_chosen):
    before = np.asarray(portrait())
    plain, plain_info = img2img(webui, portrait(), restore_faces=False)
    assert np.array_equal(plain, before)  # the stand-in's sample is the input, bit for bit
    assert "Face restoration" not in plain_info

    offset = len(webui.log())
    out, info = img2img(webui, portrait())

    assert out.shape == before.shape
    assert np.abs(out[FACE].astype(int) - before[FACE]).mean() > 5  # the face was restored
    assert changed_outside(out, before) == 0  # the rest is the input
    rows, cols = np.nonzero(np.any(out != before, axis=-1))
    print(f"img2img: changed pixels in rows {rows.min()}..{rows.max()}, columns {cols.min()}..{cols.max()}")
    assert "Face restoration: LAFR" in info
    assert "[LAFR]" not in webui.log_since(offset)


def test_img2img_without_a_face_says_so(webui, lafr_chosen):
    blank = Image.new("RGB", (256, 256), (120, 120, 120))
    offset = len(webui.log())
    out, info = img2img(webui, blank)
    assert np.array_equal(out, np.asarray(blank))
    assert "Face restoration: LAFR" in info  # A1111 writes it whenever restore_faces is on
    assert re.findall(r"\[LAFR\].*", webui.log_since(offset)) == ["[LAFR] no face found (image passed through unchanged)"]


def test_extras_tab_restores_the_face_and_writes_its_infotext(webui, extras, lafr_chosen):
    source = portrait()
    gallery, info = extras.run(source, {"visibility": 0.5, "lafr_file": LAFR})
    assert len(gallery) == 1
    out, before = np.asarray(gallery[0].convert("RGB")), np.asarray(source)
    assert out.shape == before.shape
    assert np.abs(out[FACE].astype(int) - before[FACE]).mean() > 2
    assert changed_outside(out, before) == 0
    assert f"LAFR visibility: 0.5, LAFR model: {LAFR}, LAFR faces: 1" in info
    assert f"LAFR model: {LAFR}" in gallery[0].info.get("postprocessing", "")  # written into the PNG


def test_extras_with_a_missing_file_keeps_the_image_and_the_rest_of_the_run(webui, extras, lafr_chosen):
    source = portrait()
    offset = len(webui.log())
    gallery, info = extras.run(source, {"lafr_file": "missing.safetensors"}, flipped_copy=True)

    assert len(gallery) == 2  # the image, and the copy "Create flipped copies" made after LAFR
    first, second = (np.asarray(g.convert("RGB")) for g in gallery)
    assert np.array_equal(first, np.asarray(source)) and np.array_equal(second, np.asarray(source)[:, ::-1])
    assert "LAFR" not in info
    log = webui.log_since(offset)
    assert re.findall(r"\[LAFR\].*", log) == [
        f"[LAFR] Extras: image passed through unchanged: LAFR file 'missing.safetensors' is not in "
        f"{webui.data / 'models' / 'LAFR'} (found: {LAFR}); pick another in Extras > LAFR"]
    assert "Traceback" not in log and "Error completing request" not in log


def test_extras_without_a_face_says_so_in_the_infotext(webui, extras, lafr_chosen):
    blank = Image.new("RGB", (256, 256), (120, 120, 120))
    offset = len(webui.log())
    gallery, info = extras.run(blank, {})
    assert len(gallery) == 1 and np.array_equal(np.asarray(gallery[0].convert("RGB")), np.asarray(blank))
    assert f"LAFR: no face found (image passed through unchanged), LAFR model: {LAFR}" in info
    assert re.findall(r"\[LAFR\].*", webui.log_since(offset)) == ["[LAFR] no face found (image passed through unchanged)"]


def test_extras_api_endpoint_leaves_lafr_off(webui, lafr_chosen):
    """/sdapi/v1/extra-single-image builds its script arguments for Upscale, GFPGAN and CodeFormer
    only (v1.10.1 postprocessing.run_extras): every other script gets None, which is "off"."""
    offset = len(webui.log())
    result = webui.call("/sdapi/v1/extra-single-image", {"image": b64_png(portrait()), "upscaling_resize": 1})
    assert np.array_equal(np.asarray(from_b64(result["image"]).convert("RGB")), np.asarray(portrait()))
    assert "LAFR" not in result["html_info"]
    assert "[LAFR]" not in webui.log_since(offset)


def test_an_sd15_checkpoint_passes_images_through_with_one_message(webui, lafr_chosen):
    titles = [m["title"] for m in webui.call("/sdapi/v1/sd-models")]
    webui.call("/sdapi/v1/options", {"sd_model_checkpoint": next(t for t in titles if t.startswith(SD15))})
    loaded = webui.call("/sdapi/v1/options")["sd_model_checkpoint"]  # now with its hash: "<file> [0123456789]"
    assert re.fullmatch(rf"{SD15}\.safetensors \[[0-9a-f]{{10}}\]", loaded), loaded

    offset = len(webui.log())
    before = np.asarray(portrait())
    first, info = img2img(webui, portrait())
    second, _ = img2img(webui, portrait())

    assert np.array_equal(first, before) and np.array_equal(second, before)
    assert "Face restoration: LAFR" in info
    lines = re.findall(r"\[LAFR\].*", webui.log_since(offset))
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"[LAFR] the loaded checkpoint {loaded}: LAFR needs Stable Diffusion 2.1-base")
    assert "sd1.x" in lines[0] and "Images pass through unchanged" in lines[0]
