"""InterLCM engine: schedule and step arithmetic against diffusers' LCMScheduler, the visual
encoder's published layout, the pipeline on tiny models (seeding, batching), the converter's
round trip and its refusals. Equality with InterLCM's own code on full-size random models is
bench/interlcm_reference.py (needs their checkout and its diffusers pin)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lafr_core.interlcm import lcm
from lafr_core.interlcm import convert as convert_mod
from lafr_core.interlcm import weights as weights_mod
from lafr_core.interlcm.clip_features import clip_pixels
from lafr_core.interlcm.convert import InterLCMCheckpointError, convert_interlcm, main as convert_main
from lafr_core.interlcm.visual_encoder import VisualEncoder
from lafr_core.interlcm.weights import InterLCMFileError, config, load_interlcm

diffusers = pytest.importorskip("diffusers")
CONFIGS = Path(__file__).resolve().parents[1] / "lafr_core" / "configs" / "lcm_dreamshaper_v7"


def lcm_scheduler():
    cfg = json.loads((CONFIGS / "scheduler_config.json").read_text())
    cfg.pop("_class_name")
    return diffusers.LCMScheduler(**cfg)


# --------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
def test_timesteps_are_lcm_schedulers(n):
    scheduler = lcm_scheduler()
    scheduler.set_timesteps(n)
    assert lcm.lcm_timesteps(n) == [int(t) for t in scheduler.timesteps]


def test_interlcm_schedules_as_published():
    assert lcm.interlcm_timesteps(1) == [999, 499]
    assert lcm.interlcm_timesteps(3) == [999, 759, 499, 259]
    with pytest.raises(ValueError, match="1 or 3 steps"):
        lcm.interlcm_timesteps(2)


def test_guidance_embedding_is_diffusers():
    from diffusers import LatentConsistencyModelPipeline

    ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, torch.tensor(7.0).repeat(3), embedding_dim=256)
    assert torch.equal(lcm.guidance_embedding(3, 8.0, 256), ref)


@pytest.mark.parametrize("t, t_next", [(759, 499), (499, 259), (259, None), (499, None)])
def test_one_lcm_step_is_lcm_schedulers(t, t_next):
    """Our denoise + re-noise == LCMScheduler.step (prev_sample and denoised) with the same generator."""
    scheduler = lcm_scheduler()
    scheduler.set_timesteps(4 if t_next is None or t == 759 or t_next == 259 else 2)
    scheduler._step_index = [int(x) for x in scheduler.timesteps].index(t)
    torch.manual_seed(0)
    sample, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    generator = torch.Generator().manual_seed(3)
    prev, denoised = scheduler.step(eps, torch.tensor(t), sample, generator=generator, return_dict=False)
    ours = lcm.lcm_denoise(sample, eps, t)
    assert torch.allclose(ours, denoised, atol=2e-6, rtol=1e-5)
    if t_next is not None and scheduler.step_index - 1 != len(scheduler.timesteps) - 1:
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(lcm.renoise(ours, int(scheduler.timesteps[scheduler.step_index]), noise), prev, atol=2e-6, rtol=1e-5)


def test_boundary_scalings_and_alphas_are_diffusers():
    scheduler = lcm_scheduler()
    for t in (999, 759, 499, 259):
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(torch.tensor(t))
        assert math.isclose(lcm.boundary_scalings(t)[0], float(c_skip), rel_tol=1e-5)
        assert math.isclose(lcm.boundary_scalings(t)[1], float(c_out), rel_tol=1e-6)
        assert math.isclose(lcm.alpha_bar(t), float(scheduler.alphas_cumprod[t]), rel_tol=1e-5)


@pytest.mark.parametrize("steps", [1, 3])
def test_whole_sampler_is_a_diffusers_lcm_loop(steps):
    """InterLCM's loop on the UNPATCHED LCMScheduler: step 0's model output is chosen so that its
    denoised sample is the LQ latent (their patch passes `denoised` directly); then ordinary steps.
    One generator seeded s for a single face: the noise is the same draws as ours."""
    torch.manual_seed(1)
    z_lq = torch.randn(1, 4, 8, 8)
    weights = torch.randn(4, 4)

    def predict_eps(x, t):  # any deterministic function of (x, t) stands in for the networks
        return torch.tanh(torch.einsum("ij,bjhw->bihw", weights, x) + t / 1000)

    scheduler = lcm_scheduler()
    scheduler.set_timesteps(steps + 1)
    generator = torch.Generator().manual_seed(5)
    x = z_lq
    for i, t in enumerate(int(t) for t in scheduler.timesteps):
        if i == 0:
            a = float(scheduler.alphas_cumprod[t])
            c_skip, c_out = lcm.boundary_scalings(t)
            x0 = (z_lq - c_skip * x) / c_out
            eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        else:
            eps = predict_eps(x, t)
        x, denoised = scheduler.step(eps, torch.tensor(t), x, generator=generator, return_dict=False)
    ours = lcm.interlcm_sample(z_lq, predict_eps, steps, lcm.face_generators(1, 5))
    assert torch.allclose(ours, denoised, atol=1e-4)


# --------------------------------------------------------------------------- visual encoder, CLIP input


def test_visual_encoder_layout_is_the_published_one():
    model = VisualEncoder()
    state = model.state_dict()
    assert len(state) == 110
    assert sum(p.numel() for p in model.parameters()) == 12_960_845
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["blocks.0.weight"] == (512, 197, 3)
    assert shapes["blocks.1.conv.weight"] == (512, 512, 3)
    assert shapes["blocks.3.q.weight"] == (512, 512, 1)
    assert shapes["blocks.10.conv_out.weight"] == (256, 512, 1)
    assert shapes["blocks.15.weight"] == (128,)
    assert shapes["blocks.16.weight"] == (77, 128, 3)
    assert not any(k.startswith("blocks.12.") and "conv_out" in k for k in shapes)
    out = model(torch.randn(2, 197, 768))
    assert out.shape == (2, 77, 768)
    with pytest.raises(ValueError, match="197, 768"):
        model(torch.randn(1, 77, 768))


def test_attention_is_their_bmm_softmax():
    block = VisualEncoder().blocks[3]
    x = torch.randn(2, 512, 256)
    h = block.norm(x)
    q, k, v = block.q(h), block.k(h), block.v(h)
    w = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * 512**-0.5, dim=2)
    expected = x + block.proj_out(torch.bmm(v, w.permute(0, 2, 1)))
    assert torch.allclose(block(x), expected, atol=1e-5)


def test_clip_pixels_follow_their_preprocess():
    torchvision = pytest.importorskip("torchvision")
    t = torchvision.transforms
    faces = torch.rand(2, 3, 512, 512) * 2 - 1
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    for antialias in (True, False):
        theirs = t.Compose([t.Normalize([-1.0] * 3, [2.0] * 3), t.Resize(224, interpolation=t.InterpolationMode.BICUBIC, antialias=antialias),
                            t.CenterCrop(224), t.Normalize(mean, std)])(faces)
        assert torch.allclose(clip_pixels(faces, antialias=antialias), theirs, atol=1e-5)
    assert (clip_pixels(faces, antialias=True) - clip_pixels(faces, antialias=False)).abs().max() > 0.05


# --------------------------------------------------------------------------- pipeline on tiny models


TINY_UNET = dict(
    block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, cross_attention_dim=768,
    attention_head_dim=8, norm_num_groups=32, sample_size=8,
)


def tiny_pipeline(seed=0, steps=1):
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from lafr_core.interlcm.pipeline import InterLCMPipeline

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET, time_cond_proj_dim=256)
    controlnet = ControlNetModel.from_unet(UNet2DConditionModel(**TINY_UNET), conditioning_embedding_out_channels=(16, 32))
    with torch.no_grad():
        for p in controlnet.parameters():
            if bool((p == 0).all()):
                p.normal_(0, 0.02)
    vae = AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=768, intermediate_size=64, num_hidden_layers=1, num_attention_heads=12,
                                            image_size=224, patch_size=16, hidden_act="quick_gelu"))
    return InterLCMPipeline(unet.eval(), vae.eval(), controlnet.eval(), clip.eval(), VisualEncoder().eval(), steps=steps, seed=seed)


@pytest.fixture(scope="module")
def tiny_pipe():
    return tiny_pipeline()


def test_pipeline_restores_seeded_and_batch_independent(tiny_pipe):
    pipe = tiny_pipe
    pipe.seed, pipe.steps = 4, 1
    faces = torch.rand(2, 64, 64, 3)
    out = pipe.restore(faces)
    assert out.shape == faces.shape and 0 <= out.min() and out.max() <= 1
    assert torch.allclose(pipe.restore(faces, batch_size=1), out, atol=1e-5)  # per-face noise, not per-batch
    swapped = pipe.restore(faces[[1, 0]])  # a face's place in the batch draws no other noise
    assert torch.allclose(swapped, out[[1, 0]], atol=1e-5)
    assert torch.allclose(pipe.restore(faces[1:]), out[1:], atol=1e-5)  # nor does its batch
    pipe.seed = 5  # another seed, other noise
    assert (pipe.restore(faces) - out).abs().max() > 1e-3


@pytest.mark.parametrize("steps", [1, 3])
def test_pipeline_calls_the_networks_once_per_step(tiny_pipe, steps):
    tiny_pipe.steps = steps
    calls = []
    hooks = [net.register_forward_hook(lambda m, a, k, name=name: calls.append(name))
             for name, net in (("unet", tiny_pipe.unet), ("controlnet", tiny_pipe.controlnet))]
    try:
        tiny_pipe.restore(torch.rand(1, 32, 32, 3))
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == ["controlnet", "unet"] * steps


def test_pipeline_refuses_other_families():
    from diffusers import UNet2DConditionModel

    from lafr_core.interlcm.pipeline import InterLCMModelError, require_lcm_unet

    with pytest.raises(InterLCMModelError, match="SD2.x"):
        require_lcm_unet(UNet2DConditionModel(**{**TINY_UNET, "cross_attention_dim": 1024}))
    with pytest.raises(InterLCMModelError, match="without LCM's guidance embedding"):
        require_lcm_unet(UNet2DConditionModel(**TINY_UNET))


# --------------------------------------------------------------------------- converter


@pytest.fixture
def tiny_spatial(monkeypatch):
    """The converter and loader checked against a tiny ControlNet (the full one is 1.4 GB; its
    shapes are checked by test_sentinels_fit_the_full_controlnet and the reference bench)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(0)
    model = ControlNetModel.from_unet(UNet2DConditionModel(**TINY_UNET), conditioning_embedding_out_channels=(16, 32))
    state = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    sentinels = {k: shapes[k] for k in ("conv_in.weight", "controlnet_cond_embedding.conv_in.weight", "controlnet_mid_block.weight")}
    monkeypatch.setattr(convert_mod, "spatial_encoder_shapes", lambda: shapes)
    monkeypatch.setattr(weights_mod, "SPATIAL_SENTINELS", sentinels)
    monkeypatch.setattr(convert_mod, "SPATIAL_SENTINELS", sentinels)
    return state


def test_sentinels_fit_the_full_controlnet():
    shapes = convert_mod.spatial_encoder_shapes()
    assert len(shapes) == 340
    assert all(shapes[k] == v for k, v in weights_mod.SPATIAL_SENTINELS.items())


def write_pair(folder: Path, spatial: dict, steps: int = 1, ema: bool = True):
    visual = VisualEncoder().state_dict()
    visual_path, spatial_path = folder / f"visual_encoder_{steps}step.pth", folder / f"spatial_encoder_{steps}step.pth"
    key = "params_ema" if ema else "params"
    torch.save({key: visual, "params": {k: v + 1 for k, v in visual.items()}} if ema else {key: visual}, visual_path)
    torch.save({key: spatial}, spatial_path)
    return visual_path, spatial_path, visual


def test_convert_round_trip(tmp_path, tiny_spatial):
    visual_path, spatial_path, visual = write_pair(tmp_path, tiny_spatial, steps=3)
    out = convert_interlcm(visual_path, spatial_path, tmp_path / "interlcm.safetensors")
    loaded = load_interlcm(out)
    assert loaded.steps == 3 and loaded.meta["lafr.engine"] == "interlcm"
    assert loaded.meta["lafr.licence"] == "CC BY-NC 4.0 (non-commercial; repository has no LICENSE file)"
    assert "github.com/sen-mao/InterLCM" in loaded.meta["lafr.source"] and "sha256" in loaded.meta["lafr.source"]
    assert loaded.meta["lafr.weights"] == "params_ema" and loaded.colour_fix == "wavelet"
    assert all(torch.equal(loaded.visual_encoder[k], v) for k, v in visual.items())  # params_ema, not params
    assert set(loaded.spatial_encoder) == set(tiny_spatial)
    assert all(torch.equal(loaded.spatial_encoder[k], v) for k, v in tiny_spatial.items())
    direct = VisualEncoder()
    direct.load_state_dict(visual)
    tokens = torch.randn(1, 197, 768)
    with torch.no_grad():
        assert torch.equal(loaded.build_visual_encoder()(tokens), direct.eval()(tokens))


def test_convert_takes_params_without_ema_and_module_prefix(tmp_path, tiny_spatial):
    visual = VisualEncoder().state_dict()
    torch.save({"params": {"module." + k: v for k, v in visual.items()}}, tmp_path / "v_1step.pth")
    torch.save({"params": tiny_spatial}, tmp_path / "s_1step.pth")
    loaded = load_interlcm(convert_interlcm(tmp_path / "v_1step.pth", tmp_path / "s_1step.pth", tmp_path / "o.safetensors"))
    assert loaded.meta["lafr.weights"] == "params" and set(loaded.visual_encoder) == set(visual)


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("text", "is not a torch-saved InterLCM visual encoder"),
        ("code", "refused unread"),
        ("no_params", "neither 'params_ema' nor 'params'"),
        ("swapped", "the two files are swapped"),
        ("bad_shape", "blocks.0.weight' has shape"),
        ("names_disagree", "different step counts"),
        ("not_controlnet", "the spatial encoder"),
        ("nan", "not a finite floating-point tensor"),
    ],
)
def test_convert_refuses_bad_files_and_writes_nothing(tmp_path, tiny_spatial, case, message, capsys):
    visual_path, spatial_path, visual = write_pair(tmp_path, tiny_spatial)
    if case == "missing":
        visual_path = tmp_path / "visual_encoder_1step_gone.pth"
    elif case == "text":
        visual_path.write_text("not a checkpoint")
    elif case == "code":
        torch.save({"params_ema": Evil()}, visual_path)
    elif case == "no_params":
        torch.save({"weights": visual}, visual_path)
    elif case == "swapped":
        visual_path, spatial_path = spatial_path.rename(tmp_path / "a_1step.pth"), visual_path.rename(tmp_path / "b_1step.pth")
    elif case == "bad_shape":
        torch.save({"params_ema": {**visual, "blocks.0.weight": torch.zeros(512, 196, 3)}}, visual_path)
    elif case == "names_disagree":
        spatial_path = spatial_path.rename(tmp_path / "spatial_encoder_3step.pth")
    elif case == "not_controlnet":
        torch.save({"params_ema": {k: v for k, v in tiny_spatial.items() if k != "controlnet_mid_block.weight"}}, spatial_path)
    elif case == "nan":
        torch.save({"params_ema": {**visual, "blocks.16.bias": torch.full((77,), float("nan"))}}, visual_path)
    out = tmp_path / "out" / "interlcm.safetensors"
    out.parent.mkdir()
    code = convert_main([str(visual_path), str(spatial_path), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Nothing was written." in err
    assert "unpickled!" not in capsys.readouterr().out
    assert list(out.parent.iterdir()) == []


def test_convert_needs_a_step_count_and_safetensors(tmp_path, tiny_spatial):
    visual_path, spatial_path, _ = write_pair(tmp_path, tiny_spatial)
    named_v, named_s = visual_path.rename(tmp_path / "visual.pth"), spatial_path.rename(tmp_path / "spatial.pth")
    with pytest.raises(ValueError, match="state no step count"):
        convert_interlcm(named_v, named_s, tmp_path / "o.safetensors")
    assert load_interlcm(convert_interlcm(named_v, named_s, tmp_path / "o.safetensors", steps=1)).steps == 1
    with pytest.raises(ValueError, match="must end in .safetensors"):
        convert_interlcm(named_v, named_s, tmp_path / "o.pth", steps=1)


def test_loader_names_wrong_files(tmp_path, tiny_spatial):
    from safetensors.torch import save_file

    lafr_like = tmp_path / "other.safetensors"
    save_file({"visual_encoder.blocks.0.weight": torch.zeros(1)}, str(lafr_like), metadata={"lafr.engine": "lafr"})
    with pytest.raises(InterLCMFileError, match="not a converted InterLCM file"):
        load_interlcm(lafr_like)
    pth = tmp_path / "visual_encoder_1step.pth"
    torch.save({"params_ema": {}}, pth)
    with pytest.raises(Exception, match="pickle checkpoint"):
        load_interlcm(pth)


def test_bundled_configs_are_lcm_dreamshaper_v7():
    unet = config("unet")
    assert unet["cross_attention_dim"] == 768 and unet["time_cond_proj_dim"] == 256
    assert config("controlnet")["cross_attention_dim"] == 768
    assert config("scheduler")["original_inference_steps"] == 50 and config("scheduler")["timestep_scaling"] == 10.0


def test_package_imports_without_diffusers_or_transformers():
    """Hosts install neither: the package, the loader and the converter's fallback work without them."""
    from test_host_free_imports import run_blocked

    out = run_blocked(
        "import lafr_core.interlcm, lafr_core.interlcm.convert, lafr_core.interlcm.pipeline\n"
        "from lafr_core.interlcm.convert import spatial_encoder_shapes\n"
        "print(spatial_encoder_shapes())"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"


def test_lafr_convert_takes_the_pth_pair(tmp_path, tiny_spatial, capsys):
    """`lafr convert visual.pth spatial.pth -o folder/` writes the InterLCM file (steps from the
    names); three files are refused in one line and nothing is written."""
    from lafr_core.__main__ import main

    visual_path, spatial_path, _ = write_pair(tmp_path, tiny_spatial, steps=3)
    out = tmp_path / "models"
    out.mkdir()
    assert main(["convert", str(visual_path), str(spatial_path), "-o", str(out)]) == 0
    assert load_interlcm(out / "interlcm_3step.safetensors").steps == 3
    assert "InterLCM, 3 step(s)" in capsys.readouterr().out

    assert main(["convert", str(visual_path), str(spatial_path), str(visual_path), "-o", str(tmp_path / "x.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "got 3 files" in err and "Nothing was written." in err
    assert not (tmp_path / "x.safetensors").exists()
