"""paste_faces' steps on their own: the window maths (which image pixels each face can reach)
and the pass-through when no face reaches any pixel. test_face_align_paste.py covers the whole."""

from dataclasses import replace

import pytest
import torch

from face_fixtures import load_portrait
from lafr_core.face import align_faces, detect_faces, invert_affine, paste_faces
from lafr_core.face.mask import ellipse_params, face_crop_landmarks
from lafr_core.face.paste import paste_grid


@pytest.fixture(scope="module")
def astronaut():
    image = load_portrait("astronaut.png")
    crops, faces = align_faces(image, detect_faces(image, detector="mtcnn"))
    params = ellipse_params(face_crop_landmarks(faces.affines, faces.landmarks))
    return image, crops, faces, params


def covered(grid, height, width):
    """[H, W] bool: the pixels inside some face's own window."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    face, r, c = grid.inside.nonzero(as_tuple=True)
    mask[grid.ys[face, r].long(), grid.xs[face, c].long()] = True
    return mask


@pytest.mark.parametrize("whole_crop", [False, True])
def test_every_pasted_pixel_lies_in_its_faces_window(astronaut, whole_crop):
    image, crops, faces, params = astronaut
    _, h, w, _ = image.shape
    grid = paste_grid(faces, params, whole_crop, h, w, image.device)
    window = covered(grid, h, w)
    assert grid.qx.shape == grid.inside.shape == (len(faces), grid.ys.shape[1], grid.xs.shape[1])
    mask = torch.ones(len(faces), 512, 512) if whole_crop else "landmarks"
    changed = (paste_faces(image, torch.ones_like(crops), faces, mask=mask) != image).any(-1)[0]
    assert changed.any() and not (changed & ~window).any()
    # a window pixel maps into the crop through the face's affine
    face, r, c = 0, grid.ys.shape[1] // 2, grid.xs.shape[1] // 2
    point = torch.tensor([grid.xs[face, c], grid.ys[face, r], 1.0], dtype=torch.float64)
    qx, qy = (faces.affines[face] @ point).tolist()
    assert grid.qx[face, r, c] == pytest.approx(qx, abs=1e-3) and grid.qy[face, r, c] == pytest.approx(qy, abs=1e-3)
    if whole_crop:  # the whole crop reaches at least as far as the ellipse inside it
        assert (covered(paste_grid(faces, params, False, h, w, image.device), h, w) <= window).all()


def test_a_face_outside_its_image_reaches_no_pixel(astronaut):
    image, crops, faces, params = astronaut
    inverses = faces.inverses.clone()
    inverses[:, :, 2] += 5000  # the crop now lands far right of and below the photo
    far = replace(faces, inverses=inverses, affines=invert_affine(inverses), landmarks=faces.landmarks + 5000)
    assert paste_grid(far, params, False, *image.shape[1:3], image.device) is None
    assert paste_grid(far, params, True, *image.shape[1:3], image.device) is None
    out = paste_faces(image, torch.ones_like(crops), far)
    assert torch.equal(out, image) and out is not image
