"""Set-up both stages share: the run folder and its config, and the data (scan, pairs, latent
cache, data loader, validation pairs)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Subset

from lafr_core.degrade import DegradeConfig

from .checkpoint import list_checkpoints
from .config import CONFIG_NAME, ConfigError, TrainConfig, config_differences, from_dict, load_yaml, save_yaml
from .data import (
    EpochSampler,
    FaceImage,
    FacePairs,
    LatentCache,
    PairRecipe,
    cache_fingerprint,
    load_rgb,
    prepare_images,
    to_square,
    to_tensor,
    validation_pair,
)
from .loop import build_accelerator, flat_config, ignore_signals_in_worker
from .models import LATENT_SCALE, vae_encode, vae_fingerprint


def start_run(config: TrainConfig):
    """Validate, create the run folder, check a resumed run's config, save config.yaml,
    start the trackers. Returns the Accelerator."""
    config.validate()
    accelerator = build_accelerator(config)
    out = config.output_dir
    saved_path = out / CONFIG_NAME
    if saved_path.is_file():
        if config.run.resume:
            saved = from_dict(TrainConfig, load_yaml(saved_path), str(saved_path))
            diffs = config_differences(saved, config)
            if diffs:
                raise ConfigError(
                    f"--resume: these settings differ from the run in {out} and would change what is trained: "
                    + "; ".join(diffs) + ". Start a new --output_dir to train with them."
                )
        elif list_checkpoints(out):
            raise ConfigError(
                f"{out} already holds a run with checkpoints; pass --resume latest to continue it, "
                "or choose another --output_dir"
            )
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(config, saved_path)
    accelerator.wait_for_everyone()
    if config.run.tensorboard:
        accelerator.init_trackers(f"lafr-{config.stage}", config={k: ("None" if v is None else v) for k, v in flat_config(config).items()})
    return accelerator


@dataclass
class DataBundle:
    images: list[FaceImage]
    recipe: PairRecipe
    cache: LatentCache | None
    dataset: FacePairs
    sampler: EpochSampler
    dataloader: DataLoader
    val_lq: torch.Tensor  # [n, 3, R, R] in -1..1 (fixed validation pairs)
    val_hq: torch.Tensor


def _progress(accelerator, desc: str):
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=desc, disable=not accelerator.is_local_main_process, dynamic_ncols=True)


def fill_latent_cache(
    images: list[FaceImage], recipe: PairRecipe, variants: int, cache: LatentCache, vae, accelerator, batch_size: int, num_workers: int
) -> int:
    """Encode every missing (image, variant) pair once, split across processes; returns how
    many this process encoded. Collective."""
    n = len(images)
    todo = [v * n + i for v in range(variants) for i in range(n) if not cache.has(images[i].key, v)]
    mine = todo[accelerator.process_index :: accelerator.num_processes]
    if todo:
        accelerator.print(f"latent cache: encoding {len(todo)} pairs once into {cache.dir}")
    pixels = FacePairs(images, recipe, ("lq", "hq"))
    if mine:
        loader = DataLoader(Subset(pixels, mine), batch_size=batch_size, num_workers=num_workers, worker_init_fn=ignore_signals_in_worker)
        for batch in _progress(accelerator, "caching latents")(loader):
            z_lq, z_hq = vae_encode(vae, batch["lq"]), vae_encode(vae, batch["hq"])
            for j, index in enumerate(batch["index"].tolist()):
                i, variant = pixels.split(index)
                cache.save(images[i].key, variant, z_lq[j], z_hq[j])
    accelerator.wait_for_everyone()
    return len(mine)


def setup_data(config: TrainConfig, accelerator, vae, batch_size: int, cached_fields: tuple[str, ...], live_fields: tuple[str, ...]) -> DataBundle:
    """Scan/align the images, build the pairs (from the latent cache when enabled), the data
    loader (not yet prepared) and the fixed validation pairs."""
    data = config.data
    with accelerator.main_process_first():
        prepared = prepare_images(data.data, data.align, data.resolution, config.cache_dir, progress=_progress(accelerator, "scanning images"))
    if accelerator.is_main_process:
        listed = prepared.write_skipped(config.output_dir)
        skipped = f", {len(prepared.skipped)} skipped (listed in {listed})" if listed else ""
        accelerator.print(f"data: {len(prepared.images)} images{skipped}")
    images = prepared.images
    recipe = PairRecipe(data.resolution, config.run.seed, data.flip_prob, tuple(data.crop_scale), config.degrade)
    cache = None
    if config.uses_latent_cache:
        fingerprint = cache_fingerprint(recipe, vae_fingerprint(vae), LATENT_SCALE)
        cache = LatentCache(config.cache_dir, fingerprint, describe={"recipe": json.loads(recipe.to_json()), "latent_scale": LATENT_SCALE})
        fill_latent_cache(images, recipe, data.variants, cache, vae, accelerator, batch_size, data.num_workers)
        dataset = FacePairs(images, recipe, cached_fields, cache)
        sampler = EpochSampler(len(images), data.variants, config.run.seed)
    else:
        dataset = FacePairs(images, recipe, live_fields)
        sampler = EpochSampler(len(images), None, config.run.seed)
    dataloader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=data.num_workers,
        worker_init_fn=ignore_signals_in_worker,
        persistent_workers=data.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=False,
    )
    val_config = DegradeConfig.celeba_x4() if data.val_degradation == "x4" else config.degrade
    val_lq, val_hq = [], []
    for image in images[: data.val_images]:
        lq, hq = validation_pair(to_square(load_rgb(image.load_path), data.resolution), image, recipe, val_config)
        val_lq.append(to_tensor(lq))
        val_hq.append(to_tensor(hq))
    empty = torch.zeros(0, 3, data.resolution, data.resolution)
    return DataBundle(
        images=images, recipe=recipe, cache=cache, dataset=dataset, sampler=sampler, dataloader=dataloader,
        val_lq=torch.stack(val_lq) if val_lq else empty, val_hq=torch.stack(val_hq) if val_hq else empty,
    )  # fmt: skip


def trainer_meta(config: TrainConfig, step: int, num_images: int, stages: str) -> dict[str, str]:
    """`lafr.trainer` metadata: what produced the file (DESIGN §4)."""
    from lafr_core import __version__

    info = {
        "version": __version__, "stages": stages, "steps": step, "images": num_images,
        "variants": config.data.variants, "resolution": config.data.resolution, "seed": config.run.seed,
    }  # fmt: skip
    return {"lafr.trainer": json.dumps(info, sort_keys=True)}
