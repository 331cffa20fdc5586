"""Stage 1 on the two portraits (flips/crops/degradations as variants) with a tiny 8x VAE."""

import signal
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lafr_core.lafr_file import load_lafr
from lafr_core.pipeline import LafrPipeline
from train.config import Stage1Config
from train.data import LatentCache
from train.stage1 import Stage1, train_stage1
from train_helpers import portrait_folder, stage1_config, tiny_unet_1024, tiny_vae8
from train_helpers import one_thread  # noqa: F401  (autouse fixture)


def cached_pairs(stage_or_dir):
    """All (lq, hq) latents in the run's latent cache."""
    from safetensors.torch import load_file

    files = sorted(stage_or_dir.glob("cache/latents/*/*.safetensors"))
    pairs = [load_file(f) for f in files]
    return torch.stack([p["lq"].float() for p in pairs]), torch.stack([p["hq"].float() for p in pairs])


def interrupt_at(k):
    """on_step hook: deliver a real SIGINT to this process after step k."""

    def hook(step):
        if step == k:
            signal.raise_signal(signal.SIGINT)

    return hook


def test_stage1_learns_beats_the_unaligned_baseline_and_exports_an_adapter_file(tmp_path):
    data = portrait_folder(tmp_path, extra_bad=True)
    out = tmp_path / "run"
    config = stage1_config(data, out, max_steps=400)
    config.stage1 = Stage1Config(lr=3e-3, batch_size=2, epochs=1000, reseed_every=25)
    result = train_stage1(config, vae=tiny_vae8())

    assert not result.interrupted and result.state.step == 400
    losses = [m["loss"] for _, m in result.history]
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-20:]) / 20 < 0.25 * losses[0]
    reseeded = [m["reseeded"] for _, m in result.history if "reseeded" in m]
    assert len(reseeded) == 400 // 25 and sum(reseeded) > 0  # dead codes were re-seeded
    usage = [(m["perplexity"], m["unused_codes"]) for _, m in result.history if "perplexity" in m]
    assert all(1 < p <= 128 and 0 <= unused < 128 for p, unused in usage)

    # the adapter beats the unaligned latent on its own training pairs (2 images x 4 variants)
    z_lq, z_hq = cached_pairs(out)
    assert z_lq.shape == (8, 4, 8, 8)
    weights = load_lafr(result.export)
    with torch.no_grad():
        aligned = weights.aligner(z_lq)
    assert F.l1_loss(aligned, z_hq) < 0.75 * F.l1_loss(z_lq, z_hq)

    # a stage-1 file: adapter only, Latent Align works, the UNet step refuses it by name
    assert weights.stages == "1" and weights.kohya_lora is None and weights.prompt_embeds is None
    assert weights.trainer["steps"] == 400 and weights.trainer["images"] == 2
    with pytest.raises(ValueError, match="only the stage-1 adapter"):
        LafrPipeline.from_modules(tiny_unet_1024(), tiny_vae8(), weights, device="cpu")

    # bad files were skipped and listed; the run folder has its config and a validation grid
    listed = (out / "skipped_images.txt").read_text()
    assert "broken.jpg" in listed and "tiny.png" in listed and "notes.txt" not in listed
    assert (out / "config.yaml").is_file() and (out / "validation" / "step-00000400.png").is_file()


def test_gradients_reach_extractor_codebook_and_mapping(tmp_path):
    data = portrait_folder(tmp_path)
    stage = Stage1(stage1_config(data, tmp_path / "run"), vae=tiny_vae8())
    batch = next(iter(stage.dataloader))
    loss, logs = stage.compute_loss(batch)
    loss.backward()
    aligner = stage.aligner
    for name, module in [("extractor", aligner.extractor), ("codebook", aligner.codebook), ("mapping", aligner.mapping)]:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    before = aligner.codebook.embed.detach().clone()
    stage.optimizer.step()
    assert not torch.equal(before, aligner.codebook.embed)
    assert logs["baseline_l1"] > 0 and logs["vq"] > 0


def _adapter_state(path):
    return load_lafr(path).aligner.state_dict()


@pytest.mark.parametrize("accumulation", [1, 2])
def test_resume_after_interrupt_equals_the_uninterrupted_run(tmp_path, accumulation):
    """N steps straight == k steps, Ctrl-C (a real SIGINT), --resume latest to N. Three images at
    batch 1 make epochs of 3 batches, so the interrupt lands mid-epoch; with accumulation 2 the
    last batch of each epoch is a partial accumulation (accelerate steps at the loader's end)."""
    data = portrait_folder(tmp_path)
    from PIL import Image

    Image.open(data / "grace_hopper.jpg").transpose(Image.FLIP_LEFT_RIGHT).rotate(7).save(data / "third.png")
    n, k = 7, 3
    shared_cache = str(tmp_path / "cache")

    def config(out, **run):
        c = stage1_config(data, tmp_path / out, max_steps=n, gradient_accumulation_steps=accumulation, **run)
        c.stage1 = Stage1Config(lr=2e-3, batch_size=1, epochs=100, reseed_every=2)
        c.data = replace(c.data, cache_dir=shared_cache)
        return c

    straight = train_stage1(config("straight"), vae=tiny_vae8())
    first = train_stage1(config("resumed"), vae=tiny_vae8(), on_step=interrupt_at(k))
    assert first.interrupted and first.state.step == k and first.export is None
    assert first.checkpoint.name == f"checkpoint-{k:08d}"
    assert 0 < first.state.batch_in_epoch  # mid-epoch
    second = train_stage1(config("resumed", resume="latest"), vae=tiny_vae8())
    assert not second.interrupted and second.state.step == n

    a, b = _adapter_state(straight.export), _adapter_state(second.export)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key
    # the resumed run saw the same batches: its logged losses after k match the straight run's
    straight_losses = {s: m["loss"] for s, m in straight.history}
    for step, means in second.history:
        assert abs(means["loss"] - straight_losses[step]) < 1e-6, step


def test_without_the_latent_cache_pairs_come_from_workers_with_fresh_degradations(tmp_path):
    data = portrait_folder(tmp_path)
    config = stage1_config(data, tmp_path / "run", max_steps=2)
    config.data = replace(config.data, latent_cache=False, num_workers=1)
    stage = Stage1(config, vae=tiny_vae8())
    assert stage.data.cache is None and not (tmp_path / "run" / "cache" / "latents").exists()
    assert stage.data.sampler.variants is None
    stage.data.sampler.set_epoch(5)
    assert all(index // 2 == 5 for index in stage.data.sampler)  # variant = epoch: always fresh
    from train.loop import run_loop

    result = run_loop(stage)
    assert result.state.step == 2 and all(torch.isfinite(torch.tensor(m["loss"])) for _, m in result.history)
    assert isinstance(LatentCache, type)
