"""Alignment to the FFHQ template and paste-back: unmodified crops give the photo back (RGB,
RGBA, grey, 16-bit, odd sizes), untouched pixels stay exact, overlaps blend softly."""

import math

import pytest
import torch

from face_fixtures import compose_canvas, load_portrait, psnr
from lafr_core.face import FaceSet, align_faces, detect_faces, estimate_similarity, ffhq_template, invert_affine, paste_faces
from lafr_core.face.align import apply_affine
from lafr_core.face.paste import antialias_crops


@pytest.fixture(scope="module")
def astronaut():
    image = load_portrait("astronaut.png")
    return image, detect_faces(image, detector="mtcnn")


@pytest.fixture(scope="module")
def hopper():
    image = load_portrait("grace_hopper.jpg")
    return image, detect_faces(image, detector="mtcnn")


def face_region(faces: FaceSet, i: int = 0) -> tuple[slice, slice]:
    x1, y1, x2, y2 = faces.boxes[i].round().long().tolist()
    return slice(y1, y2), slice(x1, x2)


def synthetic_faces(landmarks, image_sizes, image_index=None) -> FaceSet:
    landmarks = torch.as_tensor(landmarks, dtype=torch.float32)
    n = landmarks.shape[0]
    boxes = torch.cat([landmarks.min(1).values - 30, landmarks.max(1).values + 30], dim=1)
    index = torch.zeros(n, dtype=torch.long) if image_index is None else torch.as_tensor(image_index)
    return FaceSet(image_index=index, boxes=boxes, scores=torch.ones(n), landmarks=landmarks, image_sizes=image_sizes,
                   skipped_small=(0,) * len(image_sizes))


# --------------------------------------------------------------------------- geometry


def test_similarity_fit_recovers_a_known_transform_and_inverse():
    gen = torch.Generator().manual_seed(0)
    src = torch.rand(6, 5, 2, generator=gen, dtype=torch.float64) * 300
    angle = torch.rand(6, generator=gen, dtype=torch.float64) * 2 * math.pi
    scale = 0.3 + torch.rand(6, generator=gen, dtype=torch.float64) * 3
    rot = torch.stack([torch.stack([angle.cos(), -angle.sin()], -1), torch.stack([angle.sin(), angle.cos()], -1)], -2) * scale[:, None, None]
    true = torch.cat([rot, torch.rand(6, 2, 1, generator=gen, dtype=torch.float64) * 100], dim=-1)
    fitted = estimate_similarity(src, apply_affine(true, src))
    assert torch.allclose(fitted, true, atol=1e-9)
    inverse = invert_affine(fitted)
    assert torch.allclose(apply_affine(inverse, apply_affine(fitted, src)), src, atol=1e-9)


def test_template_scales_about_pixel_edges():
    assert torch.allclose(ffhq_template(512)[0], torch.tensor([192.98138, 239.94708], dtype=torch.float64))
    assert torch.allclose(ffhq_template(1024)[0], torch.tensor([386.46276, 480.39416], dtype=torch.float64))


def test_align_puts_landmarks_on_the_template_and_looks_right(astronaut):
    image, faces = astronaut
    crops, aligned = align_faces(image, faces)
    assert crops.shape == (1, 512, 512, 3) and crops.dtype == image.dtype
    assert aligned.aligned and aligned.crop_size == 512 and faces.affines is None  # input FaceSet unchanged
    in_crop = apply_affine(aligned.affines, aligned.landmarks)
    template = ffhq_template(512)
    # least squares: the centroid lands exactly on the template's; a smiling mouth is wider than
    # FFHQ's mean face, so single points keep a residual of a few percent of the crop
    assert torch.allclose(in_crop[0].mean(0), template.mean(0), atol=1e-6)
    assert (in_crop[0] - template).norm(dim=-1).max() < 0.04 * 512
    eyes_mid, template_eyes_mid = in_crop[0, :2].mean(0), template[:2].mean(0)
    assert (eyes_mid - template_eyes_mid).norm() < 6
    # the crop really shows the face there: detecting on the crop finds the landmarks where the
    # affine put them (3x upscaled here, so MTCNN's few-pixel spread becomes up to ~10 px)
    again = detect_faces(crops, detector="mtcnn")
    assert len(again) == 1 and (again.landmarks[0] - in_crop[0].float()).norm(dim=-1).max() < 10


def test_align_batched_over_images_equals_one_face_at_a_time(astronaut, hopper):
    a, _ = astronaut
    h = hopper[0][:, :512, :512]
    both = torch.cat([a, h, torch.flip(a, dims=[2])])
    faces = detect_faces(both, detector="mtcnn")
    assert faces.counts() == [1, 1, 1]
    crops, aligned = align_faces(both, faces, size=256)  # the hopper face shrinks (2x2 samples), the others not
    assert crops.shape == (3, 256, 256, 3)
    for i in range(3):
        one = synthetic_faces(faces.landmarks[i : i + 1], ((512, 512),))
        single, _ = align_faces(both[i : i + 1], one, size=256)
        assert torch.allclose(crops[i], single[0], atol=1e-5), i


# --------------------------------------------------------------------------- paste-back round trips


@pytest.mark.parametrize("fixture", ["astronaut", "hopper"])
def test_paste_back_of_unmodified_crops_reproduces_the_photo(fixture, request):
    image, faces = request.getfixturevalue(fixture)
    original = image.clone()
    crops, aligned = align_faces(image, faces)
    out = paste_faces(image, crops, aligned)
    assert torch.equal(image, original)  # inputs untouched
    rows, cols = face_region(faces)
    assert out.shape == image.shape and out.dtype == image.dtype
    assert psnr(out[0, rows, cols], image[0, rows, cols]) > 40
    changed = (out != image).any(dim=-1)[0]
    ys, xs = changed.nonzero().T
    x1, y1, x2, y2 = faces.boxes[0].tolist()
    pad = 0.6 * max(x2 - x1, y2 - y1)  # nothing changes far from the face
    assert xs.min() > x1 - pad and xs.max() < x2 + pad and ys.min() > y1 - pad and ys.max() < y2 + pad
    assert torch.equal(paste_faces(image, crops, aligned), out)  # no state: pasting again is the same


def test_rgba_alpha_is_byte_identical_and_colour_round_trips(astronaut):
    image, faces = astronaut
    alpha = torch.linspace(0, 1, 512)[None, :, None, None].expand(1, 512, 512, 1) ** 0.5
    rgba = torch.cat([image, alpha.reshape(1, 512, 512, 1)], dim=-1)
    crops, aligned = align_faces(rgba, faces)
    out = paste_faces(rgba, crops, aligned)
    assert out.shape == rgba.shape
    assert torch.equal(out[..., 3], rgba[..., 3])
    rows, cols = face_region(faces)
    assert psnr(out[0, rows, cols, :3], image[0, rows, cols]) > 40


def test_grey_stays_one_channel_and_round_trips(astronaut):
    image, faces = astronaut
    grey = (image * torch.tensor([0.299, 0.587, 0.114])).sum(-1, keepdim=True)
    crops, aligned = align_faces(grey, faces)
    assert torch.allclose(crops[..., 0], crops[..., 1]) and torch.allclose(crops[..., 0], crops[..., 2])
    out = paste_faces(grey, crops, aligned)
    assert out.shape == grey.shape == (1, 512, 512, 1)
    rows, cols = face_region(faces)
    assert psnr(out[0, rows, cols], grey[0, rows, cols]) > 40


def test_16_bit_values_survive_outside_the_face_and_round_trip_inside(hopper):
    image, faces = hopper
    # a 16-bit photo: values on the 1/65535 grid, with detail finer than 8 bits
    fine = torch.linspace(0, 1 / 255, image.shape[2])[None, None, :, None]
    sixteen = ((image * 0.99 + fine) * 65535).round() / 65535
    crops, aligned = align_faces(sixteen, faces)
    out = paste_faces(sixteen, crops, aligned)
    as_int = (out * 65535).round()
    back = (sixteen * 65535).round()
    untouched = (out == sixteen).all(dim=-1)
    assert untouched.float().mean() > 0.7
    assert torch.equal(as_int[untouched], back[untouched])
    rows, cols = face_region(faces)
    assert psnr(out[0, rows, cols], sixteen[0, rows, cols]) > 40


@pytest.mark.parametrize("top, left, height, width", [(0, 0, 511, 383), (13, 5, 377, 401), (1, 101, 299, 257)])
def test_odd_sizes_keep_their_size(astronaut, top, left, height, width):
    image, _ = astronaut
    cropped = image[:, top : top + height, left : left + width]
    faces = detect_faces(cropped, detector="mtcnn")
    assert len(faces) == 1
    crops, aligned = align_faces(cropped, faces)
    out = paste_faces(cropped, crops, aligned)
    assert out.shape == cropped.shape == (1, height, width, 3)
    rows, cols = face_region(faces)
    assert psnr(out[0, rows, cols], cropped[0, rows, cols]) > 40


def test_face_cut_by_the_image_edge_pastes_inside_only():
    image = load_portrait("astronaut.png")[:, 70:, 190:]  # eyes near the top-left corner
    faces = detect_faces(image, detector="mtcnn")
    assert len(faces) == 1
    crops, aligned = align_faces(image, faces)
    out = paste_faces(image, crops, aligned)
    assert out.shape == image.shape and torch.isfinite(out).all()


# --------------------------------------------------------------------------- blending


def test_strength_zero_is_identity_and_half_is_halfway(astronaut):
    image, faces = astronaut
    crops, aligned = align_faces(image, faces)
    white = torch.ones_like(crops)
    assert torch.equal(paste_faces(image, white, aligned, strength=0.0), image)
    full = paste_faces(image, white, aligned, strength=1.0)
    half = paste_faces(image, white, aligned, strength=0.5)
    nose = faces.landmarks[0, 2].round().long()
    y, x = int(nose[1]), int(nose[0])
    assert torch.allclose(full[0, y, x], torch.ones(3), atol=1e-4)
    assert torch.allclose(half[0, y, x], (image[0, y, x] + 1) / 2, atol=1e-3)
    with pytest.raises(ValueError, match="strength must be between 0 and 1"):
        paste_faces(image, white, aligned, strength=1.5)


def test_overlapping_faces_blend_without_hard_edges():
    # two faces 40 px apart: their masks overlap widely
    base = torch.tensor([[-21.0, -8], [21, -8], [0, 10], [-18, 28], [18, 28]])
    faces = synthetic_faces(torch.stack([base + torch.tensor([100.0, 100]), base + torch.tensor([140.0, 100])]), ((200, 240),))
    image = torch.full((1, 200, 240, 3), 0.5)
    crops, aligned = align_faces(image, faces, size=128)
    red = torch.zeros_like(crops)
    red[0, ..., 0] = 1
    red[1, ..., 2] = 1  # second face blue
    out = paste_faces(image, red, aligned)
    middle = out[0, 100, 120]
    assert middle[0] > 0.3 and middle[2] > 0.3  # both faces contribute where they overlap
    steps = (out[0, 1:] - out[0, :-1]).abs().max(), (out[0, :, 1:] - out[0, :, :-1]).abs().max()
    assert max(float(s) for s in steps) < 0.12  # no seam: at most a small change per pixel
    assert out[0, 100, 75:165, 1].max() < 0.5  # green never appears: no "last face wins" residue


def test_colour_correction_pulls_a_tinted_face_back(astronaut):
    image, faces = astronaut
    crops, aligned = align_faces(image, faces)
    tinted = (crops * torch.tensor([0.8, 0.95, 1.1]) + 0.05).clamp(0, 1)
    rows, cols = face_region(faces)
    errors = {}
    for method in ("none", "lab", "wavelet"):
        out = paste_faces(image, tinted, aligned, colour_correction=method, source_crops=crops)
        errors[method] = float((out[0, rows, cols] - image[0, rows, cols]).abs().mean())
    assert errors["lab"] < errors["none"] / 3 and errors["wavelet"] < errors["none"] / 3, errors
    # without source crops they are sampled again from the image: same result
    again = paste_faces(image, tinted, aligned, colour_correction="wavelet")
    assert torch.allclose(again, paste_faces(image, tinted, aligned, colour_correction="wavelet", source_crops=crops), atol=1e-5)
    with pytest.raises(ValueError, match="colour_correction must be one of none, lab, wavelet"):
        paste_faces(image, tinted, aligned, colour_correction="histogram")


def test_lab_conversion_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    from lafr_core.face.colour import lab_to_rgb, rgb_to_lab

    rgb = torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0))
    ours = rgb_to_lab(rgb)
    theirs = torch.from_numpy(cv2.cvtColor(rgb.numpy(), cv2.COLOR_RGB2Lab))
    assert (ours - theirs).abs().max() < 0.6  # OpenCV interpolates its gamma table: JND is ~1-2
    assert (lab_to_rgb(ours) - rgb).abs().max() < 1e-4
    reference = {(1.0, 1.0, 1.0): (100.0, 0.0, 0.0), (1.0, 0.0, 0.0): (53.24, 80.09, 67.20), (0.0, 0.0, 1.0): (32.30, 79.19, -107.86)}
    for colour, lab in reference.items():  # the published CIELAB values of sRGB white, red, blue
        assert torch.allclose(rgb_to_lab(torch.tensor(colour)), torch.tensor(lab), atol=0.02), colour


def test_antialiasing_blurs_only_crops_that_shrink():
    crops = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = antialias_crops(crops, torch.tensor([1.0, 4.0]))
    assert torch.equal(out[0], crops[0])  # pasted at its own scale: untouched
    assert out[1].std() < crops[1].std() * 0.6  # shrunk 4x: high frequencies damped
    assert torch.allclose(out[1].mean(), crops[1].mean(), atol=1e-2)


def test_paste_checks_its_inputs(astronaut):
    image, faces = astronaut
    crops, aligned = align_faces(image, faces)
    with pytest.raises(ValueError, match="needs the FaceSet returned by align_faces"):
        paste_faces(image, crops, faces)
    with pytest.raises(ValueError, match=r"crops must be \[1, 512, 512, 3\]"):
        paste_faces(image, crops[:, :256], aligned)
    with pytest.raises(ValueError, match="found in images of sizes"):
        paste_faces(image[:, :300], crops, aligned)


def test_no_faces_pass_through(astronaut):
    image, _ = astronaut
    empty = FaceSet.empty(((512, 512),))
    crops, aligned = align_faces(image, empty)
    assert crops.shape == (0, 512, 512, 3)
    assert torch.equal(paste_faces(image, crops, aligned), image)


def test_many_faces_on_a_canvas_paste_back_in_one_call():
    canvas = compose_canvas()
    faces = detect_faces(canvas, detector="mtcnn")
    crops, aligned = align_faces(canvas, faces)
    out = paste_faces(canvas, crops, aligned)
    for i in range(len(faces)):
        rows, cols = face_region(faces, i)
        assert psnr(out[0, rows, cols], canvas[0, rows, cols]) > 40
