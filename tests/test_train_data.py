"""Trainer data: image scan (bad files skipped and listed), alignment cache, seeded pairs, epoch
order, latent cache."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import train.data as data_mod
from lafr_core.degrade import DegradeConfig
from train.data import EpochSampler, FacePairs, LatentCache, PairRecipe, cache_fingerprint, make_pair, prepare_images
from train_helpers import portrait_folder
from train_helpers import one_thread  # noqa: F401  (autouse fixture)

RECIPE = PairRecipe(resolution=64, seed=3, flip_prob=0.5, crop_scale=(0.8, 1.0), degrade=DegradeConfig())


def test_scan_skips_and_lists_bad_images_and_reuses_its_index(tmp_path, monkeypatch):
    folder = portrait_folder(tmp_path, extra_bad=True)
    (folder / "sub").mkdir()
    (folder / "sub" / "copy.png").write_bytes((folder / "astronaut.png").read_bytes())
    prepared = prepare_images([folder], "resize", 64, tmp_path / "cache")
    assert sorted(p.source.rsplit("/", 1)[-1] for p in prepared.images) == ["astronaut.png", "grace_hopper.jpg"]
    reasons = {s.rsplit("/", 1)[-1]: why for s, why in prepared.skipped}
    assert set(reasons) == {"broken.jpg", "tiny.png", "copy.png"}
    assert "cannot decode" in reasons["broken.jpg"] and "too small" in reasons["tiny.png"] and "duplicate" in reasons["copy.png"]
    listed = prepared.write_skipped(tmp_path / "run").read_text()
    assert listed.count("\n") == 3 and "broken.jpg\tcannot decode" in listed

    # a second scan reads nothing it has seen (size + mtime unchanged)
    monkeypatch.setattr(data_mod, "load_rgb", lambda path: pytest.fail(f"re-decoded {path}"))
    again = prepare_images([folder], "resize", 64, tmp_path / "cache")
    assert again.images == prepared.images


def test_non_square_photos_are_aligned_once_and_cached(tmp_path, monkeypatch):
    folder = portrait_folder(tmp_path)  # astronaut 512x512 (square), grace_hopper 512x600
    calls = []

    def fake_align(image, size):
        calls.append(image.shape)
        return np.full((size, size, 3), 0.25, np.float32)

    monkeypatch.setattr(data_mod, "align_face", fake_align)
    prepared = prepare_images([folder], "auto", 64, tmp_path / "cache")
    assert calls == [(600, 512, 3)]  # only the non-square photo
    hopper = next(p for p in prepared.images if p.source.endswith("grace_hopper.jpg"))
    assert hopper.load_path.endswith(f"{hopper.key}-64.png") and "aligned" in hopper.load_path
    assert np.allclose(data_mod.load_rgb(hopper.load_path), 0.25, atol=1 / 255)
    prepare_images([folder], "auto", 64, tmp_path / "cache")
    assert len(calls) == 1  # cached


def test_photos_without_a_face_are_skipped_and_none_usable_is_an_error(tmp_path, monkeypatch):
    folder = portrait_folder(tmp_path)

    def only_square_faces(image, size):
        if image.shape[0] != image.shape[1]:
            raise data_mod.BadImage("no face detected")
        return np.zeros((size, size, 3), np.float32)

    monkeypatch.setattr(data_mod, "align_face", only_square_faces)
    prepared = prepare_images([folder], "detect", 64, tmp_path / "cache")
    assert [p.source.rsplit("/", 1)[-1] for p in prepared.images] == ["astronaut.png"]
    assert [(s.rsplit("/", 1)[-1], why) for s, why in prepared.skipped] == [("grace_hopper.jpg", "no face detected")]
    (folder / "astronaut.png").unlink()
    with pytest.raises(FileNotFoundError, match="none of the 1 images is usable.*no face detected"):
        prepare_images([folder], "detect", 64, tmp_path / "cache")


def test_pairs_are_deterministic_per_image_and_variant(tmp_path):
    folder = portrait_folder(tmp_path)
    images = prepare_images([folder], "resize", 64, tmp_path / "cache").images
    pairs = FacePairs(images, RECIPE, ("lq", "hq"))
    hq = pairs.hq_square(0)
    lq_a, hq_a = make_pair(hq, images[0], 2, RECIPE)
    lq_b, hq_b = make_pair(hq, images[0], 2, RECIPE)
    lq_c, _ = make_pair(hq, images[0], 3, RECIPE)
    assert np.array_equal(lq_a, lq_b) and np.array_equal(hq_a, hq_b) and not np.array_equal(lq_a, lq_c)
    other_seed, _ = make_pair(hq, images[0], 2, replace(RECIPE, seed=4))
    assert not np.array_equal(lq_a, other_seed)
    # the data loader (workers or not) gives exactly these pairs
    index = 2 * len(images) + 0
    item = pairs[index]
    assert torch.allclose(item["lq"], torch.from_numpy(lq_a.transpose(2, 0, 1)) * 2 - 1)
    batch_workers = next(iter(DataLoader(pairs, batch_size=2, sampler=[index, 1], num_workers=2)))
    assert torch.equal(batch_workers["lq"][0], item["lq"]) and torch.equal(batch_workers["hq"][0], item["hq"])
    assert item["lq"].shape == (3, 64, 64) and -1 <= item["lq"].min() and item["lq"].max() <= 1


def test_hq_only_items_skip_the_degradation_but_match(tmp_path, monkeypatch):
    folder = portrait_folder(tmp_path)
    images = prepare_images([folder], "resize", 64, tmp_path / "cache").images
    full = FacePairs(images, RECIPE, ("lq", "hq"))[5]
    monkeypatch.setattr(data_mod, "degrade", lambda *a: pytest.fail("degraded for an HQ-only item"))
    assert torch.equal(FacePairs(images, RECIPE, ("hq",))[5]["hq"], full["hq"])


def test_epoch_order_is_a_function_of_seed_and_epoch_and_cycles_variants():
    sampler = EpochSampler(num_images=5, variants=3, seed=1)
    seen = {i: set() for i in range(5)}
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(i % 5 for i in order) == list(range(5))  # every image once per epoch
        for index in order:
            seen[index % 5].add(index // 5)
        again = EpochSampler(num_images=5, variants=3, seed=1)
        again.set_epoch(epoch)
        assert list(again) == order
    assert all(v == {0, 1, 2} for v in seen.values())  # 3 epochs: each image used each variant
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_latent_cache_round_trip_and_corrupt_entries(tmp_path):
    cache = LatentCache(tmp_path, "ab" * 20, describe={"what": "test"})
    lq, hq = torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    assert not cache.has("k", 1) and cache.load("k", 1) is None
    cache.save("k", 1, lq, hq)
    entry = cache.load("k", 1)
    assert torch.allclose(entry["lq"], lq, atol=2e-3) and torch.allclose(entry["hq"], hq, atol=2e-3)
    assert entry["lq"].dtype == torch.float32
    cache.path("k", 2).write_bytes(b"garbage")
    assert cache.load("k", 2) is None  # unreadable = missing, recomputed by the trainer
    assert (cache.dir / "recipe.json").is_file()


def test_cache_fingerprint_changes_with_everything_that_shapes_a_pair():
    base = cache_fingerprint(RECIPE, "vae-a", 0.18215)
    assert base == cache_fingerprint(RECIPE, "vae-a", 0.18215)
    others = [
        cache_fingerprint(RECIPE, "vae-b", 0.18215),
        cache_fingerprint(replace(RECIPE, resolution=128), "vae-a", 0.18215),
        cache_fingerprint(replace(RECIPE, seed=9), "vae-a", 0.18215),
        cache_fingerprint(replace(RECIPE, flip_prob=0.0), "vae-a", 0.18215),
        cache_fingerprint(replace(RECIPE, degrade=DegradeConfig(jpeg_quality=(50, 60))), "vae-a", 0.18215),
    ]
    assert base not in others and len(set(others)) == len(others)


def test_auto_mode_aligns_a_non_square_photo_with_the_face_pipeline(tmp_path):
    """Integration with lafr_core.face (bundled MTCNN, offline): grace_hopper.jpg is 512x600."""
    folder = portrait_folder(tmp_path)
    prepared = prepare_images([folder], "auto", 128, tmp_path / "cache")
    hopper = next(p for p in prepared.images if p.source.endswith("grace_hopper.jpg"))
    crop = data_mod.load_rgb(hopper.load_path)
    assert crop.shape == (128, 128, 3) and hopper.load_path != hopper.source
    astronaut = next(p for p in prepared.images if p.source.endswith("astronaut.png"))
    assert astronaut.load_path == astronaut.source  # square: taken as aligned


def test_on_the_fly_pairs_are_a_pure_function_of_seed_image_and_epoch(tmp_path):
    """Stage 2 without the latent cache: variant = epoch, so every epoch draws a new degradation
    and a resumed run (or another worker) rebuilds exactly the same pair."""
    from lafr_core.degrade import DegradeConfig as D

    images = prepare_images([portrait_folder(tmp_path)], "resize", 64, tmp_path / "cache").images
    recipe = replace(RECIPE, degrade=D.preset("codeformer"))
    sampler = EpochSampler(len(images), None, seed=3)
    a, b = FacePairs(images, recipe, ("lq", "hq", "landmarks")), FacePairs(list(images), recipe, ("lq", "hq", "landmarks"))
    epochs = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(i % len(images) for i in order) == [0, 1] and all(i // len(images) == epoch for i in order)
        items = [a[i] for i in order]
        again = [b[i] for i in order]
        assert all(torch.equal(x[k], y[k]) for x, y in zip(items, again) for k in ("lq", "hq", "landmarks"))
        epochs.append({i: item["lq"] for i, item in zip(order, items)})
    assert not torch.equal(epochs[0][0], epochs[1][2])  # image 0 in epoch 0 vs epoch 1: a new degradation
