"""`doctor` finds models in ComfyUI/A1111 folders offline and flags the wrong ones."""

import subprocess
import sys

import torch
from safetensors.torch import save_file

from conftest import REPO
from lafr_core.adapter import AlignerConfig, LatentAligner
from lafr_core.doctor import check_base_checkpoint
from lafr_core.lafr_file import save_lafr

CONTEXT = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
IN = "model.diffusion_model.input_blocks.0.0.weight"
VPRED = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"


def header_checkpoint(path, context, vpred_std=0.01, in_channels=4):
    save_file({CONTEXT: torch.zeros(320, context), IN: torch.zeros(320, in_channels, 3, 3),
               VPRED: torch.randn(320) * vpred_std}, str(path))


def test_check_base_checkpoint_identifies_families(tmp_path):
    header_checkpoint(tmp_path / "sd21.safetensors", 1024)
    header_checkpoint(tmp_path / "sd15.safetensors", 768)
    header_checkpoint(tmp_path / "v.safetensors", 1024, vpred_std=0.3)
    header_checkpoint(tmp_path / "inpaint.safetensors", 1024, in_channels=9)
    assert check_base_checkpoint(tmp_path / "sd21.safetensors").startswith("ok: sd2.x")
    assert "not usable by LAFR (sd1.x" in check_base_checkpoint(tmp_path / "sd15.safetensors")
    assert "sd2.x, cross-attention 1024, 4-channel input, v prediction" in check_base_checkpoint(tmp_path / "v.safetensors")
    assert "9-channel input" in check_base_checkpoint(tmp_path / "inpaint.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    assert check_base_checkpoint(tmp_path / "junk.safetensors").startswith("unreadable")


def test_doctor_lists_models_in_a_comfyui_folder(tmp_path):
    comfy = tmp_path / "ComfyUI"
    (comfy / "models" / "checkpoints").mkdir(parents=True)
    header_checkpoint(comfy / "models" / "checkpoints" / "v2-1_512.safetensors", 1024)
    save_lafr(comfy / "models" / "lafr" / "faces.safetensors",
              aligner=LatentAligner(AlignerConfig(hidden_channels=32, codebook_size=16, codebook_dim=8, norm_groups=8)))
    env = {"COMFYUI_DIR": str(comfy), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "lafr_core", "doctor"], capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "v2-1_512.safetensors: ok: sd2.x" in out.stdout
    assert "faces.safetensors: ok: stages 1" in out.stdout
    assert "cpu (" in out.stdout and "torch " in out.stdout


def test_doctor_names_an_interlcm_file_and_its_missing_base_models(tmp_path):
    """A converted InterLCM file is reported as such (not "invalid: not a LAFR file"), with the
    LCM and CLIP folders it needs and how to get them when they are missing."""
    from lafr_core.interlcm.visual_encoder import VisualEncoder
    from lafr_core.interlcm.weights import SPATIAL_SENTINELS, base_metadata, save_interlcm

    comfy = tmp_path / "ComfyUI"
    visual = {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in VisualEncoder().state_dict().items()}
    spatial = {k: torch.zeros(shape, dtype=torch.float16) for k, shape in SPATIAL_SENTINELS.items()}
    save_interlcm(comfy / "models" / "lafr" / "interlcm_1step.safetensors", visual, spatial,
                  base_metadata(1, "test", "CC BY-NC 4.0 (non-commercial)", "params_ema"))
    env = {"COMFYUI_DIR": str(comfy), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
           "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-m", "lafr_core", "doctor"], capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "interlcm_1step.safetensors: ok: InterLCM, 1 step(s), needs LCM Dreamshaper v7 + CLIP ViT-B/16 (CC BY-NC 4.0" in out.stdout
    assert "hf download SimianLuo/LCM_Dreamshaper_v7" in out.stdout and "hf download openai/clip-vit-base-patch16" in out.stdout
