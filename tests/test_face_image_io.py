"""Image files for the restore CLI: bit depth, channels, orientation and metadata survive."""

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from face_fixtures import DATA
from lafr_core.image_io import ImageReadError, read_image, write_image


def test_16_bit_rgba_png_round_trips_exactly(tmp_path):
    gen = np.random.default_rng(0)
    array = gen.integers(0, 65536, size=(37, 53, 4), dtype=np.uint16)  # odd size, full 16-bit range
    cv2.imwrite(str(tmp_path / "in.png"), array)  # BGRA on disk
    image = read_image(tmp_path / "in.png")
    assert image.bit_depth == 16 and image.mode == "RGBA" and image.pixels.shape == (1, 37, 53, 4)
    assert torch.equal((image.pixels[0, ..., 0] * 65535).round().to(torch.int32), torch.from_numpy(array[..., 2].astype(np.int32)))
    write_image(tmp_path / "out.png", image.pixels, image)
    back = cv2.imread(str(tmp_path / "out.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back, array)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_8_bit_modes_keep_their_channels(tmp_path, mode):
    gen = np.random.default_rng(1)
    channels = len(mode)
    array = gen.integers(0, 256, size=(21, 19, channels), dtype=np.uint8)
    Image.fromarray(array[..., 0] if channels == 1 else array, mode).save(tmp_path / "in.png")
    image = read_image(tmp_path / "in.png")
    assert image.mode == mode and image.bit_depth == 8
    write_image(tmp_path / "out.png", image.pixels, image)
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == mode
        assert np.array_equal(np.asarray(out).reshape(array.shape), array)


def test_png_metadata_and_icc_profile_are_kept(tmp_path):
    source = DATA / "astronaut.png"  # carries an ICC profile, DPI and a comment
    info = PngImagePlugin.PngInfo()
    info.add_text("Description", "restored by a test")
    with Image.open(source) as im:
        icc = im.info["icc_profile"]
        im.save(tmp_path / "in.png", pnginfo=info, icc_profile=icc, dpi=(300, 300))
    image = read_image(tmp_path / "in.png")
    write_image(tmp_path / "out.png", image.pixels, image)
    with Image.open(tmp_path / "out.png") as out:
        assert out.info.get("icc_profile") == icc
        assert out.info.get("Description") == "restored by a test"
        assert tuple(round(v) for v in out.info["dpi"]) == (300, 300)


def test_jpeg_exif_orientation_is_applied_then_restored(tmp_path):
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:10, :20] = 255  # a white block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "in.jpg", exif=exif.tobytes(), quality=100)
    image = read_image(tmp_path / "in.jpg")
    assert image.pixels.shape == (1, 60, 40, 3) and image.orientation == 6  # upright for detection
    assert float(image.pixels[0, :10, -10:].mean()) > 0.9  # the block is now top-right
    write_image(tmp_path / "out.jpg", image.pixels, image)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (60, 40) and out.getexif().get(0x0112) == 6  # stored as before, tag kept
        assert np.asarray(out)[:10, :20].mean() > 230


def test_output_suffix_chooses_the_format(tmp_path):
    image = read_image(DATA / "grace_hopper.jpg")
    assert image.format == "JPEG"
    write_image(tmp_path / "out.webp", image.pixels, image)
    with Image.open(tmp_path / "out.webp") as out:
        assert out.format == "WEBP" and out.size == (512, 600)


def test_unreadable_empty_and_missing_files_are_reported(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all")
    with pytest.raises(ImageReadError, match=r"junk.png: not a readable image"):
        read_image(tmp_path / "junk.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty.jpg: the file is empty"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageReadError, match=r"missing.png: cannot read the file"):
        read_image(tmp_path / "missing.png")
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:60])  # header fine, data cut off
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "pic.bmp")
    with pytest.raises(ImageReadError, match="BMP images are not supported"):
        read_image(tmp_path / "pic.bmp")
