"""Every webui name lafr_webui relies on, checked in a real AUTOMATIC1111 or Forge source tree.

The webui cannot be installed in CI, so this reads the host's Python sources with `ast` (no
import, no gradio/torch needed) and checks the classes, methods, parameters and module names the
extension uses, with the semantics it assumes where a line of source shows them. Forge-only names
(backend/...) are checked when the tree is Forge. Skipped unless one of these is set:

    WEBUI_DIR=/path/to/stable-diffusion-webui        (a checkout, A1111 or Forge)
    WEBUI_GIT=/path/to/repo.git                      (a git dir: files are read from HEAD)
    python -m pytest tests/host/test_webui_host_sources.py
"""

from __future__ import annotations

import ast
import os
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

WEBUI_DIR = os.environ.get("WEBUI_DIR")
WEBUI_GIT = os.environ.get("WEBUI_GIT")
pytestmark = pytest.mark.skipif(not (WEBUI_DIR or WEBUI_GIT), reason="set WEBUI_DIR or WEBUI_GIT to an A1111/Forge source tree")


@lru_cache(maxsize=None)
def source(path: str) -> str:
    if WEBUI_DIR:
        file = Path(WEBUI_DIR) / path
        if not file.is_file():
            pytest.fail(f"{path} is missing from {WEBUI_DIR}")
        return file.read_text(encoding="utf-8")
    out = subprocess.run(["git", "--git-dir", WEBUI_GIT, "show", f"HEAD:{path}"], capture_output=True, text=True)
    if out.returncode:
        pytest.fail(f"{path} is missing from {WEBUI_GIT}: {out.stderr.strip()}")
    return out.stdout


def exists(path: str) -> bool:
    if WEBUI_DIR:
        return (Path(WEBUI_DIR) / path).is_file()
    return subprocess.run(["git", "--git-dir", WEBUI_GIT, "cat-file", "-e", f"HEAD:{path}"], capture_output=True).returncode == 0


@lru_cache(maxsize=None)
def tree(path: str) -> ast.Module:
    return ast.parse(source(path))


def top_level_names(path: str) -> set[str]:
    """Names a module defines or imports at top level (what `module.name` can reach)."""
    names: set[str] = set()
    for node in tree(path).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def find_class(path: str, name: str) -> ast.ClassDef:
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    pytest.fail(f"class {name} not found in {path}")


def methods(path: str, cls: str) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in find_class(path, cls).body if isinstance(n, ast.FunctionDef)}


def params(function: ast.FunctionDef) -> list[str]:
    args = function.args
    return [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]


def class_attributes(path: str, cls: str) -> set[str]:
    """Class-level names plus every self.<name> assigned in its methods."""
    node = find_class(path, cls)
    names = {t.id for n in node.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    names |= {n.target.id for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store):
            if isinstance(sub.value, ast.Name) and sub.value.id == "self":
                names.add(sub.attr)
    return names


def is_forge() -> bool:
    return exists("backend/patcher/unet.py")


# ----------------------------------------------------------------------------- both webuis


def test_face_restorer_protocol_and_registry():
    assert {"name", "restore"} <= set(methods("modules/face_restoration.py", "FaceRestoration"))
    assert "shared.face_restorers" in source("modules/face_restoration.py")
    assert "opts.face_restoration_model" in source("modules/face_restoration.py")
    assert {"face_restorers", "opts", "state", "sd_model", "OptionInfo"} <= top_level_names("modules/shared.py")
    assert "[x.name() for x in shared.face_restorers]" in source("modules/shared_options.py")  # the Settings radio
    assert "face_restoration.restore_faces(" in source("modules/processing.py")


def test_settings_api():
    init = methods("modules/options.py", "OptionInfo")["__init__"]
    assert {"default", "label", "component", "component_args", "refresh", "section", "category_id"} <= set(params(init))
    assert "info" in methods("modules/options.py", "OptionInfo")
    assert params(methods("modules/options.py", "Options")["add_option"]) == ["self", "key", "info"]
    assert 'register_category("postprocessing"' in source("modules/shared_options.py")  # our settings' category
    assert "on_ui_settings" in top_level_names("modules/script_callbacks.py")
    assert "models_path" in top_level_names("modules/paths.py")


def test_postprocessing_script_api_and_discovery():
    script = methods("modules/scripts_postprocessing.py", "ScriptPostprocessing")
    assert {"ui", "process"} <= set(script)
    assert {"name", "order"} <= class_attributes("modules/scripts_postprocessing.py", "ScriptPostprocessing")
    assert {"image", "info"} <= class_attributes("modules/scripts_postprocessing.py", "PostprocessedImage")
    scripts = source("modules/scripts.py")
    assert "issubclass(script_class, scripts_postprocessing.ScriptPostprocessing)" in scripts  # found in the module dict
    assert "sys.path = [scriptfile.basedir] + sys.path" in scripts  # extension root importable while loading
    assert "script_callbacks.clear_callbacks()" in scripts  # reload does not stack our settings callback
    runner = source("modules/scripts_postprocessing.py")
    assert "script_args_dict.get(name, None)" in runner  # API calls: None for args not given
    assert "InputAccordion" in top_level_names("modules/ui_components.py")


def test_devices_state_and_installer_api():
    assert {"torch_gc", "device", "dtype_vae", "dtype_unet"} <= top_level_names("modules/devices.py")
    state = class_attributes("modules/shared_state.py", "State")
    assert {"interrupted", "skipped", "textinfo", "sampling_step", "sampling_steps"} <= state
    assert {"is_installed", "run_pip"} <= top_level_names("launch.py")
    launch_utils = source("modules/launch_utils.py")
    assert "def run_extension_installer" in launch_utils and "install.py" in launch_utils


# ----------------------------------------------------------------------------- A1111 only


def test_a1111_model_calls():
    if is_forge():
        pytest.skip("Forge tree")
    sd_models = source("modules/sd_models.py")
    assert "model.is_sd2 = True" in sd_models and "model.is_sd1 = True" in sd_models
    hijack = source("modules/sd_hijack_unet.py")
    assert "def apply_model(orig_func, self, x_noisy, t, cond" in hijack  # casts to dtype_unet under autocast
    lowvram = source("modules/lowvram.py")
    assert "sd_model.first_stage_model.encode = first_stage_model_encode_wrap" in lowvram  # our encode call gets the GPU
    assert "sd_model.model.register_forward_pre_hook(send_me_to_gpu)" in lowvram  # and so does apply_model
    networks = source("extensions-builtin/Lora/networks.py")
    assert "network_weights_backup" in networks  # the backup our hooks must stay out of
    assert "torch.nn.Conv2d, 'forward'" in source("extensions-builtin/Lora/lora_patches.py")  # class-level patch: hooks still run


# ----------------------------------------------------------------------------- Forge only


def test_forge_patcher_and_model_calls():
    if not is_forge():
        pytest.skip("A1111 tree")
    assert "clone" in methods("backend/patcher/unet.py", "UnetPatcher")
    base = methods("backend/patcher/base.py", "ModelPatcher")
    assert {"filename", "patches", "strength_patch"} <= set(params(base["add_patches"]))
    assert {"refresh_loras", "set_model_vae_regulation"} <= set(base)
    assert {"load_lora", "model_lora_keys_unet"} <= top_level_names("backend/patcher/lora.py")
    assert "load_model_gpu" in top_level_names("backend/memory_management.py")
    assert "self.model.refresh_loras()" in source("backend/memory_management.py")  # loading merges the patch set
    apply_model = methods("backend/modules/k_model.py", "KModel")["apply_model"]
    assert params(apply_model)[:5] == ["self", "x", "t", "c_concat", "c_crossattn"]
    kmodel = source("backend/modules/k_model.py")
    assert "self.predictor.calculate_input(sigma, x)" in kmodel and "calculate_denoised" in kmodel
    assert "prediction_type" in class_attributes("backend/modules/k_prediction.py", "AbstractPrediction")
    assert "sigmas" in source("backend/modules/k_prediction.py")
    vae = methods("backend/patcher/vae.py", "VAE")
    assert {"clone", "encode", "decode"} <= set(vae)
    assert 'model_options.get("model_vae_regulation", None)' in source("backend/patcher/vae.py")
    assert "mode" in methods("backend/nn/vae.py", "DiagonalGaussianDistribution")
    assert "self.is_sd2 = True" in source("backend/diffusion_engine/sd20.py")
    assert "forge_objects" in class_attributes("backend/diffusion_engine/base.py", "ForgeDiffusionEngine")
