"""InterLCM Loader + InterLCM Restore Faces in a real ComfyUI (COMFYUI_DIR), on full-size
random-weight models of the real configs, against the standalone InterLCMPipeline (diffusers),
which bench/interlcm_reference.py checks against InterLCM's own code.

The ComfyUI side is ComfyUI's own: the LCM UNet through Load Diffusion Model's loader (which
drops LCM's guidance weight: the loader re-applies it as a bias patch), the VAE through
comfy.sd.VAE, the spatial encoder through ComfyUI's ControlNet, CLIP ViT-B/16 in ComfyUI's
ClipVisionModel. What must hold: restored crops equal the reference to 2e-3 for 1 and 3 steps,
also when ComfyUI unloads every model between our calls; the node on a real photo equals the
standalone chain; the user's MODEL is unchanged; wrong inputs are named."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from comfy_support import import_comfy, load_pack, needs_comfyui  # noqa: E402

pytestmark = needs_comfyui
TOLERANCE = 2e-3
SEED = 11


def _face_crops(size: int) -> torch.Tensor:
    """The two test portraits' aligned faces at `size` px: [2, size, size, 3] 0..1."""
    from face_fixtures import load_portrait

    from lafr_core.host_chain import FaceOptions, find_and_align

    crops = []
    for name in ("astronaut.png", "grace_hopper.jpg"):
        found, _ = find_and_align(load_portrait(name), FaceOptions(detector="mtcnn", crop_size=size))
        crops.append(found[:1])
    return torch.cat(crops)


@pytest.fixture(scope="module")
def interlcm(tmp_path_factory):
    """Files in ComfyUI's model folders + the reference outputs, computed before ComfyUI loads
    anything (the test never holds both sides' full-size models at once)."""
    from face_fixtures import load_portrait
    from interlcm_reference import random_clip_vision, write_encoders, write_lcm_folder
    from safetensors.torch import save_file

    from lafr_core.host_chain import CropEngine, FaceOptions, restore_faces
    from lafr_core.interlcm.convert import convert_interlcm
    from lafr_core.interlcm.pipeline import InterLCMPipeline

    # LAFR_INTERLCM_TEST_DIR keeps the files and references between runs (for debugging this test)
    kept = os.environ.get("LAFR_INTERLCM_TEST_DIR")
    work = Path(kept) if kept else tmp_path_factory.mktemp("interlcm")
    work.mkdir(parents=True, exist_ok=True)
    files = {steps: work / f"interlcm_{steps}step.safetensors" for steps in (1, 3)}
    if kept and (work / "refs.pt").exists():
        return {"work": work, "files": files, **torch.load(work / "refs.pt", weights_only=True)}
    write_lcm_folder(work / "lcm", seed=0)
    clip = random_clip_vision(seed=2)
    # as openai/clip-vit-base-patch16's model.safetensors names them (transformers 5's tower has no prefix)
    save_file({"vision_model." + k.removeprefix("vision_model."): v.contiguous() for k, v in clip.state_dict().items()},
              str(work / "clip_vit_b16.safetensors"))
    visual, spatial = write_encoders(work, 1, seed=3)
    convert_interlcm(visual, spatial, files[1])
    for src in (visual, spatial):  # the same random encoders as "3-step" weights
        os.link(src, work / src.name.replace("_1step", "_3step"))
    convert_interlcm(work / "visual_encoder_3step.pth", work / "spatial_encoder_3step.pth", files[3])
    for src in (visual, spatial, work / "visual_encoder_3step.pth", work / "spatial_encoder_3step.pth"):
        src.unlink()

    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(work / "lcm", subfolder="unet")
    vae = AutoencoderKL.from_pretrained(work / "lcm", subfolder="vae")
    crops = _face_crops(256)
    photo = load_portrait("astronaut.png")
    refs = {}
    for steps in (1, 3):
        pipe = InterLCMPipeline.from_weights(unet, vae, clip, files[steps], seed=SEED, device="cpu", dtype=torch.float32)
        with torch.no_grad():
            refs[steps] = pipe.restore(crops if steps == 1 else crops[:1])
            if steps == 1:
                engine = CropEngine(pipe.restore, torch.device("cpu"), "InterLCM")
                refs["photo"] = restore_faces(photo, engine, FaceOptions(detector="mtcnn", colour_correction="wavelet")).images
        del pipe
        gc.collect()
    del unet, vae, clip
    gc.collect()
    tensors = {"crops": crops, "photo": photo, "refs": refs}
    if kept:
        torch.save(tensors, work / "refs.pt")
    return {"work": work, "files": files, **tensors}


def _comfy_models(work: Path):
    comfy_sd = import_comfy()
    import comfy.sd

    from safetensors.torch import load_file

    model = comfy_sd.load_diffusion_model(str(work / "lcm" / "unet" / "diffusion_pytorch_model.safetensors"))
    vae = comfy.sd.VAE(sd=load_file(str(work / "lcm" / "vae" / "diffusion_pytorch_model.safetensors")))
    return model, vae


def _register_folders(work: Path) -> None:
    import folder_paths

    folder_paths.add_model_folder_path("lafr", str(work))
    folder_paths.add_model_folder_path("clip_vision", str(work))
    folder_paths.add_model_folder_path("diffusion_models", str(work / "lcm" / "unet"))


def _fingerprint(module) -> dict[str, int]:
    return {k: hash(v.detach().cpu().numpy().tobytes()) for k, v in module.state_dict().items() if "time_embed" in k or "conv_in" in k}


def test_restored_crops_equal_the_reference_for_1_and_3_steps_under_forced_unloads(interlcm, monkeypatch):
    import_comfy()
    pack = load_pack()
    import comfy.model_management as mm

    _register_folders(interlcm["work"])
    model, vae = _comfy_models(interlcm["work"])
    before = _fingerprint(model.model.diffusion_model)
    host = sys.modules[pack.__name__ + ".nodes.interlcm_host"]
    loader = pack.NODE_CLASS_MAPPINGS["InterLCMLoader"]()
    lists = loader.INPUT_TYPES()["required"]
    assert "interlcm_1step.safetensors" in lists["interlcm_name"][0] and "clip_vit_b16.safetensors" in lists["clip_vision_name"][0]

    frees = []
    interrupted = mm.throw_exception_if_processing_interrupted

    def free_then_check():  # ComfyUI unloads everything between our calls: nothing may change
        frees.append(1)
        mm.free_memory(1e30, mm.get_torch_device())
        interrupted()

    for steps in (1, 3):
        (models,) = loader.load(f"interlcm_{steps}step.safetensors", "diffusion_pytorch_model.safetensors", "clip_vit_b16.safetensors")
        assert models.steps == steps
        crops = interlcm["crops"] if steps == 1 else interlcm["crops"][:1]
        if steps == 3:
            monkeypatch.setattr(mm, "throw_exception_if_processing_interrupted", free_then_check)
        with torch.no_grad():
            out = host.interlcm_engine(model, vae, models, SEED, "test").restore(crops)
        error = (out - interlcm["refs"][steps]).abs().max().item()
        change = (out - crops).abs().mean().item()
        print(f"InterLCM {steps}-step in ComfyUI vs the standalone pipeline: max abs {error:.3g} (face changed {change:.3g})")
        assert error < TOLERANCE and change > 0.02
    assert frees, "the forced unload never ran"

    mm.load_models_gpu([model])
    assert not model.patches and "model_sampling" not in model.object_patches
    assert _fingerprint(model.model.diffusion_model) == before, "the user's MODEL was modified"
    del model, vae
    mm.unload_all_models()
    gc.collect()


def test_the_node_on_a_photo_equals_the_standalone_chain(interlcm):
    import_comfy()
    pack = load_pack()
    import comfy.model_management as mm

    _register_folders(interlcm["work"])
    model, vae = _comfy_models(interlcm["work"])
    (models,) = pack.NODE_CLASS_MAPPINGS["InterLCMLoader"]().load(
        "interlcm_1step.safetensors", "diffusion_pytorch_model.safetensors", "clip_vit_b16.safetensors")
    node = pack.NODE_CLASS_MAPPINGS["InterLCMRestoreFaces"]()
    photo = interlcm["photo"]
    result = node.restore(photo, model, vae, models, "mtcnn", 0.0, 20, "all", 1.0, "file default", 0.3, SEED)
    out, restored, count = result["result"]
    reference = interlcm["refs"]["photo"]
    error = (out - reference).abs().max().item()
    print(f"InterLCM Restore Faces vs the standalone chain: max abs {error:.3g}, photo changed {(out - photo).abs().max():.3g}")
    assert count == 1 and restored.shape == (1, 512, 512, 3)
    assert error < TOLERANCE and (out - photo).abs().max() > 0.1
    assert result["ui"]["lafr_before"] and result["ui"]["lafr_after"]
    del model, vae
    mm.unload_all_models()
    gc.collect()


def test_wrong_models_are_named(interlcm, tmp_path):
    import_comfy()
    pack = load_pack()
    import comfy.model_management as mm

    from safetensors.torch import save_file

    host = sys.modules[pack.__name__ + ".nodes.interlcm_host"]
    nodes = sys.modules[pack.__name__ + ".nodes.interlcm_nodes"]
    work = interlcm["work"]
    other = tmp_path / "other_lcm.safetensors"  # an LCM file whose time embedding is not the MODEL's
    save_file({"time_embedding.cond_proj.weight": torch.randn(320, 256), "time_embedding.linear_1.bias": torch.randn(1280)}, str(other))
    models = nodes.load_models(str(interlcm["files"][1]), str(other), str(work / "clip_vit_b16.safetensors"))
    model, vae = _comfy_models(work)
    with pytest.raises(ValueError, match="the MODEL input is not 'other_lcm.safetensors'"):
        pack.NODE_CLASS_MAPPINGS["InterLCMRestoreFaces"]().restore(
            interlcm["photo"], model, vae, models, "mtcnn", 0.0, 20, "all", 1.0, "file default", 0.3, 0)
    plain = tmp_path / "sd15_unet.safetensors"
    save_file({"time_embedding.linear_1.bias": torch.zeros(1280)}, str(plain))
    with pytest.raises(ValueError, match="no LCM guidance embedding"):
        nodes.load_models(str(interlcm["files"][1]), str(plain), str(work / "clip_vit_b16.safetensors"))
    vit_l = {f"vision_model.encoder.layers.{i}.layer_norm1.weight": torch.ones(1024) for i in range(24)}
    vit_l["vision_model.embeddings.position_embedding.weight"] = torch.zeros(257, 1024)
    save_file(vit_l, str(tmp_path / "clip_vit_l.safetensors"))
    with pytest.raises(ValueError, match=r"'clip_vit_l.safetensors' is a CLIP vision tower with 24 layers, width 1024 .*\(ViT-L/14\).*ViT-B/16"):
        host.load_clip_vision_b16(tmp_path / "clip_vit_l.safetensors")
    lafr_file = tmp_path / "lafr.safetensors"
    from pack_fixtures import write_stand_in_lafr

    write_stand_in_lafr(lafr_file)
    with pytest.raises(ValueError, match="LAFR Loader"):
        nodes.load_models(str(lafr_file), str(other), str(work / "clip_vit_b16.safetensors"))
    del model, vae
    mm.unload_all_models()
    gc.collect()
