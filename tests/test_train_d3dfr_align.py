"""The facial-structure loss frames faces as Deep3DFaceRecon does (train/d3dfr_align.py), checked
against a direct reimplementation of its util/preprocess.py `align_img` (POS fit, PIL bicubic
resize, 224 crop) on the real photos with MTCNN landmarks."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DATA_DIR
from lafr_core.face import align_faces, detect_faces
from lafr_core.face.align import ffhq_template
from train.d3dfr_align import D3DFR_LM3D, align_d3dfr, crop_boxes
from train.data import Augment, apply_augment


def reference_align_img(image: Image.Image, landmarks: np.ndarray):
    """Deep3DFaceRecon's align_img(img, lm, lm3D) with target_size 224, rescale_factor 102,
    written out from its description: returns (uint8 crop, (w, h, left, up))."""
    w0, h0 = image.size
    lm = landmarks.astype(np.float64).copy()
    lm[:, 1] = h0 - 1 - lm[:, 1]  # test.py's read_data flips y before align_img
    x3d = D3DFR_LM3D.numpy()
    design = np.zeros((10, 8))
    design[0::2, 0:3], design[0::2, 3] = x3d, 1
    design[1::2, 4:7], design[1::2, 7] = x3d, 1
    k = np.linalg.lstsq(design, lm.reshape(10, 1), rcond=None)[0][:, 0]
    s = 102.0 / ((np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2)
    t = k[[3, 7]]
    w, h = int(w0 * s), int(h0 * s)
    left = int(w / 2 - 112 + (t[0] - w0 / 2) * s)
    up = int(h / 2 - 112 + (h0 / 2 - t[1]) * s)
    crop = image.resize((w, h), resample=Image.BICUBIC).crop((left, up, left + 224, up + 224))
    return np.asarray(crop), (w, h, left, up)


def photo(name):
    image = Image.open(DATA_DIR / name).convert("RGB")
    return image, torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


def mtcnn_landmarks(pixels):
    faces = detect_faces(pixels, detector="mtcnn", select="largest")
    assert len(faces) == 1
    return faces


def ours(pixels, landmarks):
    crop = align_d3dfr(pixels.permute(0, 3, 1, 2), landmarks).clamp(0, 1)
    return crop[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("name", ["astronaut.png", "grace_hopper.jpg"])
def test_same_crop_as_deep3dfacerecon_on_real_photos(name):
    image, pixels = photo(name)
    landmarks = mtcnn_landmarks(pixels).landmarks.double()
    expected, box = reference_align_img(image, landmarks[0].numpy())
    assert crop_boxes(landmarks, image.height, image.width) == [box]  # the same resize and crop, to the pixel
    got = ours(pixels, landmarks)
    diff = np.abs(got - expected.astype(np.float32) / 255.0) * 255.0
    # PIL rounds to 8 bits after each of its two resize passes; we stay in float
    assert diff.mean() < 0.5 and diff.max() < 8, (diff.mean(), diff.max())


def test_ffhq_training_crop_with_the_template_matches_and_shrinks_without_aliasing():
    """The training case: a 512 FFHQ-aligned crop and the template's 5 points (D3DFR shrinks
    it about 2x; torch's antialiased bicubic follows PIL's)."""
    _, pixels = photo("grace_hopper.jpg")
    crops, _ = align_faces(pixels, mtcnn_landmarks(pixels), size=512)
    aligned = crops[0].numpy()
    image = Image.fromarray(np.round(aligned * 255).astype(np.uint8))
    pixels512 = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
    template = ffhq_template(512)
    expected, box = reference_align_img(image, template.numpy())
    assert box[0] < 300  # shrunk: 512 -> ~250 before the 224 crop
    diff = np.abs(ours(pixels512, template[None]) - expected.astype(np.float32) / 255.0) * 255.0
    assert diff.mean() < 0.5 and diff.max() < 8, (diff.mean(), diff.max())


@pytest.mark.parametrize("name", ["astronaut.png", "grace_hopper.jpg"])
def test_photos_and_training_crops_land_in_the_same_d3dfr_frame(name):
    """Why the loss needs it: after D3DFR's alignment, a face from a photo and the FFHQ-aligned
    training crop put the eyes / nose / mouth at about the same pixels; the old resize of the
    512 crop to 224 put them elsewhere."""

    def framed(landmarks, height, width):
        w, h, left, up = crop_boxes(landmarks[None].double(), height, width)[0]
        return (landmarks.double() + 0.5) * torch.tensor([w / width, h / height]) - 0.5 - torch.tensor([left, up])

    image, pixels = photo(name)
    from_photo = framed(mtcnn_landmarks(pixels).landmarks[0], image.height, image.width)
    from_template = framed(ffhq_template(512), 512, 512)
    resized = (ffhq_template(512).double() + 0.5) * 224 / 512 - 0.5
    # measured: 2.2 px (Grace Hopper, frontal) and 6.9 px (the astronaut, smiling, head tilted)
    # on average per landmark; the plain resize is 16 px off (eyes 20 px too low)
    assert (from_photo - from_template).norm(dim=1).mean() < 8
    assert (resized - from_template).norm(dim=1).mean() > 14


def test_differentiable_batched_and_out_of_frame_is_zero():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 128, 128, requires_grad=True)
    template = ffhq_template(128).float()
    shifted = template + torch.tensor([50.0, 0.0])  # a face near the right edge: the crop runs off the image
    landmarks = torch.stack([template, shifted, template])
    crops = align_d3dfr(images, landmarks)
    assert crops.shape == (3, 3, 224, 224)
    assert torch.equal(crops[0], crops[0]) and torch.allclose(align_d3dfr(images[2:], template), crops[2:3])
    assert crops[1, :, :, -20:].abs().max() == 0  # PIL's crop pads with zeros
    crops.sum().backward()
    assert images.grad.abs().sum() > 0 and torch.isfinite(images.grad).all()
    with pytest.raises(ValueError, match="5 landmarks"):
        align_d3dfr(images, torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match="cannot fit D3DFR's landmarks to face 0"):
        align_d3dfr(images[:1], torch.zeros(1, 5, 2))  # all points on one spot: no scale


@pytest.mark.parametrize("flip", [False, True])
def test_augmented_pairs_carry_their_landmarks(flip):
    """The template moved with a pair's crop and flip lands where the content moved
    (train/data.py Augment.points; a flip also swaps left/right)."""
    size = 128
    template = ffhq_template(size).numpy()
    yy, xx = np.mgrid[0:size, 0:size]
    aug = Augment(size=size, flip=flip, side=112, top=9, left=5)
    points = aug.points(template)
    for j, (x0, y0) in enumerate(template):
        blob = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 2.0**2)).astype(np.float32)
        moved = apply_augment(np.repeat(blob[..., None], 3, axis=2), aug)[..., 0]
        centroid = np.array([(moved * xx).sum(), (moved * yy).sum()]) / moved.sum()
        i = [1, 0, 2, 4, 3][j] if flip else j  # where landmark j is listed after the augmentation
        assert np.hypot(*(centroid - points[i])) < 0.2, (j, centroid, points[i])
