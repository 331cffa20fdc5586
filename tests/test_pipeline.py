"""Standalone pipeline: base-model loading (single file, diffusers folder), refusals, restore()."""

import gc

import pytest
import torch
from safetensors.torch import save_file

from conftest import build_unet, tiny_unet_config
from lafr_core.adapter import AlignerConfig, LatentAligner
from lafr_core.base_model import BaseModelError
from lafr_core.host_chain import restore_crops
from lafr_core.lafr_file import LafrWeights
from lafr_core.lora import add_conv_lora, lora_state_to_kohya
from lafr_core.pipeline import LafrPipeline, load_sd21
from lafr_core.schedule import x0_from_eps
from ldm_fixtures import sd21_ldm_checkpoint

TINY_VAE = dict(
    block_out_channels=[8, 16],
    down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2,
    layers_per_block=1,
    norm_num_groups=4,
    latent_channels=4,
    sample_size=32,
)


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(5)
    return AutoencoderKL(**TINY_VAE).eval()


def tiny_weights(with_adapter=True):
    torch.manual_seed(7)
    unet = build_unet(tiny_unet_config())
    add_conv_lora(unet)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    aligner = LatentAligner(AlignerConfig(hidden_channels=32, codebook_size=16, codebook_dim=8, norm_groups=8)).eval()
    weights = LafrWeights(
        aligner=aligner if with_adapter else None,
        kohya_lora=lora_state_to_kohya(unet),
        prompt_embeds=torch.randn(1, 77, 32),
        meta={"lafr.latent_scale": "0.18215", "lafr.stages": "1+2" if with_adapter else "2"},
    )
    return weights, unet  # unet: the peft-active reference


def test_restore_is_encode_align_one_lora_step_decode():
    weights, lora_unet = tiny_weights()
    vae = tiny_vae()
    faces = torch.rand(3, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    pipe = LafrPipeline.from_modules(build_unet(tiny_unet_config()), vae, weights, device="cpu")
    ticks = []
    out = pipe.restore(faces, batch_size=2, progress=ticks.append)
    assert out.shape == faces.shape and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    assert ticks == [2, 3]
    # the same computation written out with the unpruned, peft-active UNet
    with torch.no_grad():
        x = faces.permute(0, 3, 1, 2) * 2 - 1
        z = vae.encode(x).latent_dist.mode() * 0.18215
        z = weights.aligner(z)
        eps = lora_unet(z, 999, encoder_hidden_states=weights.prompt_embeds.expand(3, -1, -1)).sample
        ref = ((vae.decode(x0_from_eps(z, eps) / 0.18215).sample.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    assert (out - ref).abs().max() < 1e-3


def test_lora_only_file_skips_alignment_and_stage1_file_is_refused():
    weights, _ = tiny_weights(with_adapter=False)
    pipe = LafrPipeline.from_modules(build_unet(tiny_unet_config()), tiny_vae(), weights, device="cpu")
    assert pipe.aligner is None
    assert pipe.restore(torch.rand(1, 32, 32, 3)).shape == (1, 32, 32, 3)
    stage1 = LafrWeights(aligner=weights.aligner, kohya_lora=None, prompt_embeds=None, meta={"lafr.stages": "1"})
    with pytest.raises(ValueError, match="only the stage-1 adapter"):
        LafrPipeline.from_modules(build_unet(tiny_unet_config()), tiny_vae(), stage1, device="cpu")


@pytest.mark.parametrize("with_adapter", [True, False])
def test_host_model_through_the_chain_equals_restore(with_adapter):
    """The CLI runs host_chain on pipe.host_model(): raw latents for the VAE, the file's adapter in
    the chain, scaled latents for the UNet. It must give what pipe.restore gives."""
    weights, _ = tiny_weights(with_adapter)
    pipe = LafrPipeline.from_modules(build_unet(tiny_unet_config()), tiny_vae(), weights, device="cpu")
    faces = torch.rand(3, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    host = pipe.host_model()
    raw = host.encode(faces)
    assert raw.shape == (3, 4, 32, 32)  # the tiny VAE halves each side
    assert torch.allclose(raw * pipe.latent_scale, pipe.encode(faces.permute(0, 3, 1, 2) * 2 - 1))
    out = restore_crops(weights, faces, host)
    assert out.shape == faces.shape and out.dtype == torch.float32
    assert (out - pipe.restore(faces)).abs().max() < 1e-5


def test_restore_rejects_wrong_layout():
    weights, _ = tiny_weights()
    pipe = LafrPipeline.from_modules(build_unet(tiny_unet_config()), tiny_vae(), weights, device="cpu")
    with pytest.raises(ValueError, match=r"expects faces \[batch, H, W, 3\]"):
        pipe.restore(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiples of 8"):
        pipe.restore(torch.rand(1, 60, 60, 3))


@pytest.fixture(scope="module")
def sd21_file(tmp_path_factory):
    """Full-size SD2.1-base single-file checkpoint (fp16, random weights, real LDM keys)."""
    path = tmp_path_factory.mktemp("ckpt") / "v2-1_512-stand-in.safetensors"
    save_file(sd21_ldm_checkpoint(), str(path))
    gc.collect()
    return path


def test_single_file_sd21_loads_offline_with_bundled_configs(sd21_file):
    unet, vae = load_sd21(sd21_file)
    assert unet.config.cross_attention_dim == 1024 and unet.config.in_channels == 4
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724
    assert vae.config.scaling_factor == 0.18215
    from safetensors import safe_open

    with safe_open(str(sd21_file), "pt") as f:  # a weight really lands where it belongs
        ldm = f.get_tensor("model.diffusion_model.input_blocks.1.0.in_layers.2.weight")
        vae_attn = f.get_tensor("first_stage_model.encoder.mid.attn_1.q.weight")
    assert torch.equal(unet.down_blocks[0].resnets[0].conv1.weight, ldm)
    assert torch.equal(vae.encoder.mid_block.attentions[0].to_q.weight, vae_attn[:, :, 0, 0])


@pytest.mark.parametrize(
    "kwargs, found",
    [
        (dict(context_dim=768), "it is sd1.x"),
        (dict(v_prediction=True), "it predicts v"),
    ],
)
def test_single_file_refuses_sd15_and_v_prediction(tmp_path, kwargs, found):
    path = tmp_path / "model.safetensors"
    ckpt = sd21_ldm_checkpoint(**kwargs)
    # only the UNet matters for the check: keep the file small
    save_file({k: v for k, v in ckpt.items() if k.startswith("model.")}, str(path))
    del ckpt
    with pytest.raises(BaseModelError, match=f"LAFR needs Stable Diffusion 2.1-base.*{found}"):
        load_sd21(path)


def test_single_file_refuses_sdxl_and_non_checkpoints(tmp_path):
    sdxl = tmp_path / "sdxl.safetensors"
    save_file({"model.diffusion_model.label_emb.0.0.weight": torch.zeros(1280, 2816)}, str(sdxl))
    with pytest.raises(BaseModelError, match="it is sdxl"):
        load_sd21(sdxl)
    lora = tmp_path / "some_lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 4)}, str(lora))
    with pytest.raises(BaseModelError, match="no Stable Diffusion UNet inside"):
        load_sd21(lora)
    with pytest.raises(BaseModelError, match="no such file or folder"):
        load_sd21(tmp_path / "missing.safetensors")


def test_diffusers_folder_loads_and_v_prediction_folder_is_refused(tmp_path):
    from diffusers import DDPMScheduler

    unet, vae = build_unet(tiny_unet_config()), tiny_vae()
    unet.config.cross_attention_dim  # tiny: 32, so patch the saved config to SD2's width check
    folder = tmp_path / "sd21"
    # a real SD2 folder layout, small: SD2 block layout, 1024-d cross-attention
    cfg = tiny_unet_config()
    cfg["cross_attention_dim"] = 1024
    build_unet(cfg).save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    DDPMScheduler(beta_schedule="scaled_linear", prediction_type="epsilon").save_pretrained(folder / "scheduler")
    loaded_unet, loaded_vae = load_sd21(folder)
    assert loaded_unet.config.cross_attention_dim == 1024
    DDPMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction").save_pretrained(folder / "scheduler")
    with pytest.raises(BaseModelError, match="it predicts v"):
        load_sd21(folder)


def test_sampled_latent_does_not_depend_on_a_faces_place_in_the_batch():
    """The "sample" rule (OSEDiff files): a face's noise is the batch-of-one draw wherever it
    sits, so a video window or a scaled-out run gives each face the same result."""
    from tests.cli_fixtures import tiny_pipeline

    _, pipe = tiny_pipeline()
    pipe.latent_rule, pipe.latent_seed = "sample", 3
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    together = pipe.encode_raw(images)
    alone = torch.cat([pipe.encode_raw(images[i:i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)
    assert not torch.allclose(together, pipe.vae.encode(images).latent_dist.mode(), atol=1e-5)
