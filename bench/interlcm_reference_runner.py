"""Run InterLCM's OWN inference code (a local checkout) on one aligned face, on the CPU, fp32.

Started by bench/interlcm_reference.py with the Python of a venv that has InterLCM's diffusers
pin (diffusers 0.28.2, with huggingface_hub 0.23.4, transformers 4.41.2, tokenizers 0.19.1, peft 0.11.1 and
the `openai-clip` package, installed `--no-deps` beside a current torch): its lcm_utils.py
patches diffusers 0.28's LatentConsistencyModelPipeline and LCMScheduler.

Nothing of InterLCM is copied here: the checkout goes on sys.path and its modules are imported
and called as inference_InterLCM.py calls them (same preprocess composition, same calls, same
arguments), with three differences that touch loading only:
  * `basicsr/__init__.py` imports the whole training stack (datasets, losses, models); the
    `basicsr` package is registered without running it, so `basicsr.archs` / `basicsr.utils` /
    `basicsr.utils.lcm_utils` import as usual;
  * the LCM pipeline is built from the local random-weight folder's unet, vae and scheduler (no
    text encoder or safety checker: InterLCM passes prompt_embeds and skips the checker) instead of
    `DiffusionPipeline.from_pretrained("SimianLuo/LCM_Dreamshaper_v7")`;
  * `ControlNetModel.from_unet` gets a random SD1.5 UNet of that folder's config without
    `time_cond_proj_dim` (SD1.5's UNet config) instead of runwayml/stable-diffusion-v1-5's: every
    weight it copies is then replaced by the strict load of the spatial encoder's params_ema.
The LCM step noise comes from `generator=torch.Generator().manual_seed(seed)` (their code passes
none and draws from the global generator).

    python interlcm_reference_runner.py INTERLCM_DIR WORK STEPS SEED OUT.pt
WORK holds lcm/ (diffusers folder), clip_vit_b16.pt (OpenAI state dict), input.pt ([1, 3, 512,
512] in -1..1) and visual_encoder_<S>step.pth / spatial_encoder_<S>step.pth.
"""

from __future__ import annotations

import argparse
import os
import sys
import types


def register_basicsr_without_init(root: str) -> None:
    """`import basicsr.x` without basicsr/__init__.py (which imports the training stack)."""
    package = types.ModuleType("basicsr")
    package.__path__ = [os.path.join(root, "basicsr")]
    sys.modules["basicsr"] = package


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("interlcm_dir", "work", "steps", "seed", "out"):
        parser.add_argument(name)
    cli = parser.parse_args()
    root, work, steps = os.path.abspath(cli.interlcm_dir), os.path.abspath(cli.work), int(cli.steps)
    sys.path.insert(0, root)
    register_basicsr_without_init(root)

    import torch

    torch.set_grad_enabled(False)
    # --- as inference_InterLCM.py sets up its modules
    import clip
    import torchvision.transforms as transforms

    from basicsr.utils.clip_util import VisionTransformer

    clip.model.VisionTransformer = VisionTransformer
    from diffusers import ControlNetModel, LatentConsistencyModelPipeline, LCMScheduler, UNet2DConditionModel, AutoencoderKL

    from basicsr.utils.lcm_utils import register_lcm_forward, register_lcmschedule_step
    from basicsr.utils.registry import ARCH_REGISTRY
    import basicsr.archs.visual_encoder  # noqa: F401  (registers VisualEncoder)
    from scripts.wavelet_color_fix import wavelet_reconstruction

    device = "cpu"
    clip_model, clip_preprocess = clip.load(os.path.join(work, "clip_vit_b16.pt"), device=device)
    preprocess = transforms.Compose(
        [transforms.Normalize(mean=[-1.0, -1.0, -1.0], std=[2.0, 2.0, 2.0])] + clip_preprocess.transforms[:2] + clip_preprocess.transforms[4:]
    )
    visual_encoder = ARCH_REGISTRY.get("VisualEncoder")(nf=64, emb_dim=197, ch_mult=[2, 4, 8], res_blocks=2, img_size=512).to(device)
    visual_encoder.load_state_dict(torch.load(os.path.join(work, f"visual_encoder_{steps}step.pth"))["params_ema"])
    visual_encoder.eval()

    unet = UNet2DConditionModel.from_pretrained(os.path.join(work, "lcm"), subfolder="unet")
    sd15_config = {k: v for k, v in unet.config.items() if k != "time_cond_proj_dim"}
    sd15_unet = UNet2DConditionModel.from_config(sd15_config)  # the SD1.5 UNet their ControlNet is made from
    spatial_encoder = ControlNetModel.from_unet(sd15_unet).to(device)
    del sd15_unet
    spatial_encoder.load_state_dict(torch.load(os.path.join(work, f"spatial_encoder_{steps}step.pth"))["params_ema"])
    spatial_encoder.eval()
    lcm = LatentConsistencyModelPipeline(
        vae=AutoencoderKL.from_pretrained(os.path.join(work, "lcm"), subfolder="vae"), text_encoder=None, tokenizer=None,
        unet=unet, scheduler=LCMScheduler.from_pretrained(os.path.join(work, "lcm"), subfolder="scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(device)
    register_lcm_forward(lcm, spatial_encoder)
    register_lcmschedule_step(lcm.scheduler)

    # --- the per-face body of inference_InterLCM.py (num_inference_steps = steps + 1)
    cropped_face_t = torch.load(os.path.join(work, "input.pt")).to(device)
    input = preprocess(cropped_face_t)
    img_emb = clip_model.encode_image(input).to(torch.float)
    visual_feat = visual_encoder(img_emb)
    latent_code = lcm.vae.encode(cropped_face_t)["latent_dist"].mean * 0.18215
    output = lcm.forward(
        height=512, width=512, num_inference_steps=steps + 1, guidance_scale=8.0, latents=latent_code,
        prompt_embeds=visual_feat, output_type="pil", lcm_origin_steps=50, lq_input=cropped_face_t,
        generator=torch.Generator().manual_seed(int(cli.seed)),
    ).images
    wavelet = wavelet_reconstruction(output, cropped_face_t)
    torch.save(
        {
            "image": output.float(), "image_wavelet": wavelet.float(), "clip_tokens": img_emb.float(),
            "visual_feat": visual_feat.float(), "latent": latent_code.float(),
            "timesteps": [int(t) for t in lcm.scheduler.timesteps],
        },
        cli.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
