"""End to end in a real ComfyUI server (COMFYUI_DIR): the pack installed in a temporary
custom_nodes, full-size SD2.1-base stand-ins (random weights, real LDM keys) and a LAFR file
in the model folders, `main.py --cpu` on 127.0.0.1; every example workflow is converted to the
API format with the server's own /object_info, posted, and must write an image of the input's
size; an SD1.5-shaped checkpoint must fail with our message. Skipped when COMFYUI_DIR is unset.

    COMFYUI_DIR=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest tests/host/test_comfyui_e2e.py
(the python must have ComfyUI's requirements installed)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import os
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from comfy_support import COMFYUI_DIR, REPO, needs_comfyui  # noqa: E402
from pack_fixtures import copy_pack, write_stand_in_lafr  # noqa: E402
from conftest import DATA_DIR  # noqa: E402

pytestmark = needs_comfyui
PACK_PARTS = ("__init__.py", "nodes", "lafr_core", "web", "example_workflows", "pyproject.toml", "requirements.txt")
CKPT, SD15_CKPT, LAFR, IMAGE = "v2-1_512-ema-pruned.safetensors", "sd15_stand_in.safetensors", "lafr.safetensors", "portrait.png"
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
    save_file(sd21_ldm_checkpoint(), str(ckpts / CKPT))
    save_file(sd21_ldm_checkpoint(sd15=True), str(ckpts / SD15_CKPT))
    save_file(sd21_ldm_checkpoint(v_prediction=True), str(ckpts / VPRED_CKPT))
    write_stand_in_lafr(base / "models" / "lafr" / LAFR)


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
        socket_names = {i["name"] for i in node["inputs"]}
        widget_names = [name for section in ("required", "optional") for name, spec in info["input"].get(section, {}).items()
                        if name not in socket_names and (isinstance(spec[0], list) or spec[0] in WIDGET_KINDS)]
        for name, value in zip(widget_names, node.get("widgets_values", [])):
            inputs[name] = value
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
    assert info["LAFRLoader"]["input"]["required"]["lafr_name"][0] == [LAFR]
    ours = [line for line in (base / "server.log").read_text().splitlines() if "ComfyUI-LAFR" in line]
    assert ours and not any("IMPORT FAILED" in line for line in ours), ours


@pytest.mark.parametrize("workflow", sorted(p.name for p in (REPO / "example_workflows").glob("*.json")))
def test_example_workflow_runs_and_saves_an_image(server, workflow):
    port, base, info = server
    prompt = ui_to_api(json.loads((REPO / "example_workflows" / workflow).read_text()), info)
    result = run_prompt(port, prompt)
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[-2000:]
    saved = [img for out in result["outputs"].values() for img in out.get("images", []) if img["type"] == "output"]
    assert saved, result["outputs"]
    path = base / "output" / saved[0]["subfolder"] / saved[0]["filename"]
    assert Image.open(path).size == Image.open(base / "input" / IMAGE).size


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
