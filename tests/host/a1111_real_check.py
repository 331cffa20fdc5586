"""Run the extension inside a real AUTOMATIC1111 tree, on CPU, with A1111's own module objects.

Run by tests/host/test_webui_a1111_real.py in a fresh interpreter (A1111 mutates sys.argv, the
working folder and patches ldm classes at import): python a1111_real_check.py A1111_DIR REPO.
It prints one "CHECK name value" line per fact the test asserts.

What is real: A1111's shared_init.initialize(), extensions.list_extensions(), scripts.load_scripts()
(twice: "Reload UI"), script_callbacks.ui_settings_callback(), face_restoration.restore_faces(),
the postprocessing runner with its gradio UI, sd_hijack_unet's hijacks, and an
ldm.models.diffusion.ddpm.LatentDiffusion built from repositories/stable-diffusion-stability-ai's
v2-inference.yaml at toy widths (UNet weights from a diffusers UNet via lafr_core.ldm_keys).
What stands in: the text encoder (torch.nn.Identity: LAFR ships its prompt embedding) and, when
modules.sd_models does not import (k-diffusion missing), shared.sd_model is set by property.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

A1111, REPO = sys.argv[1], sys.argv[2]
DATA = tempfile.mkdtemp(prefix="a1111-data-")
sys.argv = ["webui.py", "--skip-torch-cuda-test", "--no-download-sd-model", "--use-cpu", "all", "--no-half", "--data-dir", DATA]
os.chdir(A1111)
sys.path.insert(0, A1111)


def check(name: str, value) -> None:
    print(f"CHECK {name} {value}", flush=True)


from modules import shared, shared_init  # noqa: E402

shared_init.initialize()
os.makedirs(f"{DATA}/extensions", exist_ok=True)
os.symlink(REPO, f"{DATA}/extensions/ComfyUI-LAFR")

from modules import extensions, face_restoration, script_callbacks, scripts, scripts_postprocessing  # noqa: E402

extensions.list_extensions()
check("extension_active", "ComfyUI-LAFR" in [e.name for e in extensions.active()])
scripts.load_scripts()
scripts.load_scripts()  # what "Reload UI" does
check("restorers", ",".join(r.name() for r in shared.face_restorers))
check("postprocessing_scripts", ",".join(d.script_class.__name__ for d in scripts.postprocessing_scripts_data))
script_callbacks.ui_settings_callback()
check("settings", ",".join(sorted(k for k in shared.opts.data_labels if k.startswith("lafr_"))))

# ----------------------------------------------------------------------------- a tiny real LatentDiffusion
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import modules.sd_hijack_unet  # noqa: E402,F401  the ldm hijacks a loaded A1111 has in place
from modules import devices  # noqa: E402
from ldm.util import instantiate_from_config  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

sys.path[:0] = [REPO + "/tests", REPO]
from conftest import build_unet  # noqa: E402
from webui_models import lafr_weights, tiny_sd2_config, write_lafr_file  # noqa: E402

from lafr_core.ldm_keys import diffusers_to_ldm, layout_from_diffusers_config  # noqa: E402

config = OmegaConf.load(Path(A1111) / "repositories/stable-diffusion-stability-ai/configs/stable-diffusion/v2-inference.yaml")
params = config.model.params
params.unet_config.params.update(model_channels=32, channel_mult=[1, 1, 2, 2], num_head_channels=16,
                                 use_checkpoint=False, use_fp16=False)
params.first_stage_config.params.ddconfig.update(ch=32, ch_mult=[1, 1, 1, 1], num_res_blocks=1)
params.cond_stage_config = {"target": "torch.nn.Identity"}
torch.manual_seed(0)
model = instantiate_from_config(config.model).eval()
diffusers_config = {**tiny_sd2_config(), "norm_num_groups": 32}  # LDM's GroupNorm32 uses 32 groups
unet = build_unet(diffusers_config)
converted = diffusers_to_ldm(unet.state_dict(), **layout_from_diffusers_config(diffusers_config))
result = model.model.diffusion_model.load_state_dict(converted)
check("ldm_weights_loaded", not result.missing_keys and not result.unexpected_keys)
model.is_sd1, model.is_sd2, model.is_sdxl, model.is_sd3 = False, True, False, False
model.sd_checkpoint_info = SimpleNamespace(title="tiny-sd21-ldm.safetensors")
devices.dtype_unet = torch.float32  # what sd_models.load_model_weights sets under --no-half
try:
    from modules import sd_models

    sd_models.model_data.sd_model, sd_models.model_data.was_loaded_at_least_once = model, True
except ImportError:
    type(shared).sd_model = property(lambda self: model)
check("model", f"{type(model).__module__}.{type(model).__name__}/{model.parameterization}")

weights = lafr_weights(SimpleNamespace(unet=unet, config=diffusers_config))
write_lafr_file(Path(shared.models_path) / "LAFR" / "tiny.safetensors", weights)
shared.opts.face_restoration_model = "LAFR"
shared.opts.lafr_detector = "mtcnn"

# ----------------------------------------------------------------------------- face restorer
before = {k: v.clone() for k, v in model.state_dict().items()}
image = np.asarray(Image.open(Path(REPO) / "tests/data/astronaut.png").convert("RGB")).copy()
start = time.time()
out = face_restoration.restore_faces(image)
check("restore_seconds", round(time.time() - start, 1))
check("face_changed", round(float(np.abs(out[90:150, 195:255].astype(int) - image[90:150, 195:255]).mean()), 1))
check("corner_same", np.array_equal(out[:40, :40], image[:40, :40]))
check("weights_identical", all(torch.equal(v, before[k]) for k, v in model.state_dict().items()))
check("hooks_left", len([n for n, m in model.named_modules() if m._forward_hooks]))
check("state_restored", (shared.state.textinfo, shared.state.sampling_step) == (None, 0))

# ----------------------------------------------------------------------------- Extras, through the webui's runner
runner = scripts.scripts_postproc
pp = scripts_postprocessing.PostprocessedImage(Image.fromarray(image))
runner.run(pp, runner.create_args_for_run({"LAFR": {"enable": True, "visibility": 0.5}}))
check("extras_info", sorted(pp.info.items()))
pp = scripts_postprocessing.PostprocessedImage(Image.fromarray(image))
runner.run(pp, runner.create_args_for_run({}))  # an API request that leaves LAFR out: None args
check("extras_api_without_lafr", (pp.info == {}) and np.array_equal(np.asarray(pp.image), image))

# ----------------------------------------------------------------------------- an SD1.5 checkpoint
model.is_sd2, model.is_sd1 = False, True
model.sd_checkpoint_info = SimpleNamespace(title="pretend-sd15.safetensors")
first, second = face_restoration.restore_faces(image), face_restoration.restore_faces(image)
check("sd15_unchanged", np.array_equal(first, image) and np.array_equal(second, image))
