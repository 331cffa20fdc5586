"""Stage 2 with a tiny SD2-layout UNet (1024-d cross-attention), tiny 8x VAE and random tiny loss
encoders behind the real wrappers (LPIPS, CLIPVisionModelWithProjection, 3DMM regressor)."""

import signal
from dataclasses import replace

import pytest
import torch

from lafr_core.adapter import LatentAligner
from lafr_core.lafr_file import load_lafr, save_lafr
from lafr_core.pipeline import LafrPipeline
from train.config import RunConfig
from train.losses import MissingWeights
from train.loop import run_loop
from train.models import BaseModels, vae_encode
from train.stage2 import Stage2, train_stage2
from train_helpers import TINY_ADAPTER, portrait_folder, stage2_config, tiny_encoders, tiny_unet_1024, tiny_vae8
from train_helpers import one_thread  # noqa: F401  (autouse fixture)

PROMPT = torch.randn(1, 77, 1024, generator=torch.Generator().manual_seed(3))


@pytest.fixture
def stage1_file(tmp_path):
    torch.manual_seed(4)
    return save_lafr(tmp_path / "stage1.safetensors", aligner=LatentAligner(TINY_ADAPTER))


def one_image_folder(tmp_path):
    folder = portrait_folder(tmp_path)
    (folder / "grace_hopper.jpg").unlink()
    return folder


def base_state(unet):
    """The UNet's own weights (peft's base_layer names mapped back), LoRA excluded."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in unet.state_dict().items() if "lora_" not in k}


def test_stage2_trains_only_the_lora_and_exports_a_file_the_pipeline_runs(tmp_path, stage1_file):
    data = one_image_folder(tmp_path)
    config = stage2_config(data, tmp_path / "run", stage1_file, max_steps=10)
    config.data = replace(config.data, variants=1, latent_cache=True)  # the same pair every step
    unet, vae = tiny_unet_1024(), tiny_vae8()
    before_unet, before_vae = base_state(unet), {k: v.clone() for k, v in vae.state_dict().items()}
    stage = Stage2(config, base=BaseModels(unet=unet, vae=vae), prompt_embeds=PROMPT, encoder_factory=tiny_encoders)
    lora_before = [p.detach().clone() for p in stage.lora_params]
    result = run_loop(stage)

    losses = torch.tensor([m["loss"] for _, m in result.history])
    assert len(losses) == 10 and torch.isfinite(losses).all()
    assert losses[-3:].mean() < 0.9 * losses[0]
    assert {"mse", "lpips", "id", "fs"} <= result.history[0][1].keys()
    # only the LoRA moved: base UNet, VAE and stage-1 adapter are bit-identical
    after = base_state(stage.unet)
    assert after.keys() == before_unet.keys()
    assert all(torch.equal(after[k], before_unet[k]) for k in after)
    assert all(torch.equal(v, before_vae[k]) for k, v in vae.state_dict().items())
    adapter_file = load_lafr(stage1_file).aligner.state_dict()
    assert all(torch.equal(v, adapter_file[k]) for k, v in stage.aligner.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(lora_before, stage.lora_params))
    assert sum(p.numel() for p in stage.lora_params) == sum(p.numel() for p in unet.parameters() if p.requires_grad)

    # the exported file: stages 1+2, loads through lafr_file, runs in the pipeline
    weights = load_lafr(result.export)
    assert weights.stages == "1+2" and weights.lora_rank == 4 and weights.prompt == "face, high quality"
    assert torch.equal(weights.prompt_embeds, PROMPT)
    assert weights.trainer["steps"] == 10
    pipe = LafrPipeline.from_modules(tiny_unet_1024(), tiny_vae8(), weights, device="cpu")
    face = torch.from_numpy(stage.data.dataset.hq_square(0))[None]  # [1, 64, 64, 3] 0..1
    restored = pipe.restore(face)
    assert restored.shape == face.shape and torch.isfinite(restored).all()
    # ... and computes what the trainer trained: same x0 from the merged file and the live LoRA
    with torch.no_grad():
        z_lq = vae_encode(vae, face.permute(0, 3, 1, 2) * 2 - 1)
        stage.model.eval()
        trained_x0 = stage.model(stage.aligner(z_lq))
    assert (pipe.restore_latents(z_lq) - trained_x0).abs().max() < 1e-4


def test_stage2_resume_after_interrupt_equals_the_uninterrupted_run(tmp_path, stage1_file):
    data = portrait_folder(tmp_path)
    n, k = 5, 2
    cache = str(tmp_path / "cache")

    def run(out, on_step=None, **run_kw):
        config = stage2_config(data, tmp_path / out, stage1_file, max_steps=n, **run_kw)
        config.data = replace(config.data, cache_dir=cache)
        base = BaseModels(unet=tiny_unet_1024(), vae=tiny_vae8())
        return train_stage2(config, base=base, prompt_embeds=PROMPT, encoder_factory=tiny_encoders, on_step=on_step)

    straight = run("straight")
    first = run("resumed", on_step=lambda s: s == k and signal.raise_signal(signal.SIGTERM))
    # 2 images at batch 1: step 2 ends epoch 0, so resuming exercises the epoch boundary
    assert first.interrupted and first.state.step == k and (first.state.epoch, first.state.batch_in_epoch) == (0, 2)
    second = run("resumed", resume="latest")
    assert second.state.step == n
    a, b = load_lafr(straight.export).kohya_lora, load_lafr(second.export).kohya_lora
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, stage1_file):
    data = one_image_folder(tmp_path)
    grads = []
    for on in (False, True):
        config = stage2_config(data, tmp_path / f"run{on}", stage1_file)
        config.run = replace(config.run, gradient_checkpointing=on)
        stage = Stage2(config, base=BaseModels(unet=tiny_unet_1024(), vae=tiny_vae8()), prompt_embeds=PROMPT, encoder_factory=tiny_encoders)
        stage.model.train()
        with torch.no_grad():  # LoRA B starts at zero; give it a value so A gets a gradient too
            for p in stage.lora_params:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(p.numel()))
        loss, _ = stage.compute_loss(next(iter(stage.dataloader)))
        loss.backward()
        grads.append([p.grad.clone() for p in stage.lora_params])
    assert any(g.abs().sum() > 0 for g in grads[0])
    for plain, checkpointed in zip(*grads):
        assert torch.allclose(plain, checkpointed, atol=1e-5, rtol=1e-4)


def test_a_missing_encoder_fails_at_start_up_before_the_base_model_loads(tmp_path, stage1_file):
    data = one_image_folder(tmp_path)
    config = stage2_config(data, tmp_path / "run", stage1_file)
    config.run = RunConfig(output_dir=str(tmp_path / "run"), base_model=str(tmp_path / "no-such-model.safetensors"))
    config.stage2 = replace(config.stage2, lambda_lpips=0, lambda_id=0, fs_checkpoint=str(tmp_path / "d3dfr" / "epoch_20.pth"))
    with pytest.raises(MissingWeights, match=r"d3dfr/epoch_20\.pth.*--lambda_fs 0"):
        train_stage2(config, prompt_embeds=PROMPT)
    # with its lambda at 0, nothing is loaded for it and the run gets past the encoders
    config.stage2 = replace(config.stage2, lambda_fs=0)
    with pytest.raises(Exception, match="no-such-model") as err:
        train_stage2(config, prompt_embeds=PROMPT)
    assert not isinstance(err.value, MissingWeights)
