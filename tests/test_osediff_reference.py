"""The converted file against peft itself, on FULL-size SD2.1-base random models (CPU, fp32).

A checkpoint is built the way OSEDiff builds and saves it (three peft adapters on the UNet, one
on the VAE encoder, conv_in retrained, `LoraConfig(r=4)` without lora_alpha), converted, and
applied by lafr_core's standalone pipeline (LafrPipeline.from_modules) onto the base models. peft's merged weights and
the unmerged peft models' outputs must match ours to float32 round-off.

Heavy: two full UNets (3.5 GB each) are alive at the peak; the first is freed before the VAE
check. Run it as `flock /tmp/lafr-heavy.lock python -m pytest tests/test_osediff_reference.py`
when other heavy tests run on the same machine.
"""

from __future__ import annotations

import gc

import torch

from lafr_core.lafr_file import load_lafr
from lafr_core.lora import merge_vae_lora
from lafr_core.osediff import convert
from lafr_core.pipeline import LafrPipeline
from osediff_fixtures import ADAPTERS, peft_models, random_full_model, structure_checkpoint


def _peft_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)}


def _peft_merged_state(model) -> dict[str, torch.Tensor]:
    """peft's own merge of every active adapter, with the base names back (no `.base_layer`)."""
    for layer in _peft_layers(model).values():
        layer.merge()
    return {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if ".lora_" not in k}


def _max_diff(ours: dict, theirs: dict) -> tuple[float, str]:
    assert set(ours) == set(theirs), (sorted(set(ours) ^ set(theirs)))[:5]
    worst = max(((ours[k] - theirs[k]).abs().max().item(), k) for k in ours)
    return worst


@torch.no_grad()
def test_converted_file_equals_peft(tmp_path):
    torch.set_num_threads(max(1, torch.get_num_threads()))
    base_unet, base_vae = random_full_model("unet", seed=0), random_full_model("vae", seed=2)
    peft_unet, peft_vae, ckpt = peft_models(base_unet, base_vae, rank=4, seed=1)

    # the saved structure is OSEDiff's (and the light builder of the error tests gives the same)
    light = structure_checkpoint(rank=4)
    assert {k: v for k, v in ckpt.items() if "state_dict" not in k} == {k: v for k, v in light.items() if "state_dict" not in k}
    for key in ("state_dict_unet", "state_dict_vae"):
        assert {k: tuple(v.shape) for k, v in ckpt[key].items()} == {k: tuple(v.shape) for k, v in light[key].items()}
    assert (len(ckpt["state_dict_unet"]), len(ckpt["state_dict_vae"])) == (518, 64)
    del light

    # peft: scale alpha/r = 8/4 = 2 on every layer, all three UNet adapters active
    layers = _peft_layers(peft_unet)
    assert len(layers) == 258
    assert all(set(layer.active_adapters) == set(ADAPTERS) for layer in layers.values())
    assert {s for layer in layers.values() for s in layer.scaling.values()} == {2.0}
    assert {s for layer in _peft_layers(peft_vae).values() for s in layer.scaling.values()} == {2.0}

    src = tmp_path / "osediff_face.pkl"
    torch.save(ckpt, src)
    weights = load_lafr(convert(src, tmp_path / "osediff_face.safetensors"))
    del ckpt

    gen = torch.Generator().manual_seed(3)
    z = torch.randn(1, 4, 32, 32, generator=gen)
    context = torch.randn(1, 77, 1024, generator=gen)
    image = torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1
    eps_base = base_unet(z, 999, encoder_hidden_states=context).sample
    mean_base = base_vae.encode(image).latent_dist.mean

    # ours: the standalone pipeline applies the file (replacement, LoRA, VAE LoRA) to the bases in place
    pipe = LafrPipeline.from_modules(base_unet, base_vae, weights, device="cpu", dtype=torch.float32, prompt_embeds=context)
    ours = base_unet

    eps_peft = peft_unet(z, 999, encoder_hidden_states=context).sample
    eps_ours = pipe.unet.eps(z)
    out_diff = (eps_peft - eps_ours).abs().max().item()
    scale = eps_peft.abs().max().item()
    effect = (eps_peft - eps_base).abs().max().item()
    print(f"UNet eps: max |peft - ours| = {out_diff:.3g}, the LoRA's effect {effect:.3g} (output max {scale:.3g})")
    assert out_diff <= 1e-4 * scale and effect >= 0.1 * scale  # a real difference that we reproduce

    merged = _peft_merged_state(peft_unet)
    diff, key = _max_diff(ours.state_dict(), merged)
    print(f"UNet merged weights: max |peft - ours| = {diff:.3g} at {key}")
    assert diff <= 1e-6
    del peft_unet, ours, base_unet, merged, eps_peft, eps_ours
    gc.collect()

    # the VAE encoder: LoRA'd latent distribution, then merged weights (decoder untouched)
    dist_peft = peft_vae.encode(image).latent_dist
    dist_ours = pipe.vae.encode(image).latent_dist
    for what in ("mean", "logvar"):
        a, b = getattr(dist_peft, what), getattr(dist_ours, what)
        d = (a - b).abs().max().item()
        print(f"VAE {what}: max |peft - ours| = {d:.3g} (max {a.abs().max().item():.3g})")
        assert d <= 1e-4 * a.abs().max().item()
    effect = (dist_peft.mean - mean_base).abs().max().item()
    print(f"VAE mean: the LoRA's effect {effect:.3g}")
    assert effect >= 0.05 * dist_peft.mean.abs().max().item()
    # the file's "sample" rule: OSEDiff's latent_dist.sample() after torch.manual_seed(seed)
    pipe.latent_rule, pipe.latent_seed = "sample", 5
    torch.manual_seed(5)
    drawn = dist_peft.sample()
    d = (pipe.encode_raw(image) - drawn).abs().max().item()
    print(f"VAE sampled latent: max |peft - ours| = {d:.3g}")
    assert d <= 1e-4 * drawn.abs().max().item()

    diff, key = _max_diff(base_vae.state_dict(), _peft_merged_state(peft_vae))
    print(f"VAE merged weights: max |peft - ours| = {diff:.3g} at {key}")
    assert diff <= 1e-6


def test_vae_lora_at_zero_strength_changes_nothing():
    """merge_vae_lora at strength 0 changes nothing (a cheap guard on the scale path)."""
    vae = random_full_model("vae", seed=5)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    lora = {
        "lora_vae.quant_conv.lora_down.weight": torch.randn(4, 8, 1, 1),
        "lora_vae.quant_conv.lora_up.weight": torch.randn(8, 4, 1, 1),
        "lora_vae.quant_conv.alpha": torch.tensor(8.0),
    }
    merge_vae_lora(vae, lora, strength=0.0)
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
