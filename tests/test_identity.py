"""Identity distance on the real photos with the real dlib model, and the ArcFace ONNX path on a
tiny exported network with ArcFace's signature (no ArcFace weights exist here)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from eval_fixtures import aligned_crop
from lafr_core.identity import (
    ARCFACE_TEMPLATE_112,
    DLIB_THRESHOLD,
    ArcFaceOnnx,
    DlibIdentity,
    IdentityModelError,
    dlib_problem,
    find_arcface,
    load_identity_model,
    same_person,
)

needs_dlib = pytest.mark.skipif(dlib_problem() is not None, reason=f"identity extra not installed: {dlib_problem()}")


@pytest.fixture(scope="module")
def crops() -> dict[str, torch.Tensor]:
    return {
        "astronaut": aligned_crop("astronaut"),
        "hopper": aligned_crop("grace_hopper"),
        "astronaut_x2": aligned_crop("astronaut", 2),
        "astronaut_x4": aligned_crop("astronaut", 4),
    }


@pytest.fixture(scope="module")
def dlib_model():
    if dlib_problem() is not None:
        pytest.skip(dlib_problem())
    return DlibIdentity()


@needs_dlib
def test_dlib_distances_ordered_on_real_photos(dlib_model, crops):
    a = crops["astronaut"]
    d = {k: float(dlib_model.distances(a, crops[k])[0]) for k in ("astronaut_x2", "astronaut_x4", "hopper")}
    # measured: 0.154, 0.419, 0.698 (dlib's same-person threshold 0.6)
    assert d["astronaut_x2"] < d["astronaut_x4"] < d["hopper"]
    assert d["astronaut_x2"] < DLIB_THRESHOLD < d["hopper"]
    assert d["hopper"] == pytest.approx(0.70, abs=0.03)
    assert same_person(d["astronaut_x2"], dlib_model) is True and same_person(d["hopper"], dlib_model) is False


@needs_dlib
def test_dlib_embedding_shape_self_distance_symmetry_and_crop_size(dlib_model, crops):
    both = torch.cat([crops["astronaut"], crops["hopper"]])
    emb = dlib_model.embed(both)
    assert emb.shape == (2, 128) and torch.isfinite(emb).all()
    assert dlib_model.distances(both, both).abs().max() == 0
    assert torch.allclose(dlib_model.distances(both, both.flip(0)), dlib_model.distances(both.flip(0), both))
    # the box scales with the crop: a 256 crop of the same face is still the same person
    small = torch.nn.functional.interpolate(crops["astronaut"].permute(0, 3, 1, 2), size=256, mode="area").permute(0, 2, 3, 1)
    assert float(dlib_model.distances(small, crops["astronaut"])[0]) < 0.2


def test_missing_dlib_names_the_install_command(monkeypatch):
    import lafr_core.identity as identity

    real = identity.importlib.util.find_spec
    monkeypatch.setattr(identity.importlib.util, "find_spec", lambda name, *a: None if name == "dlib" else real(name, *a))
    monkeypatch.setattr(identity, "arcface_folders", lambda: [])
    monkeypatch.delenv("LAFR_ARCFACE", raising=False)
    with pytest.raises(IdentityModelError, match="pip install face_recognition_models dlib-bin"):
        load_identity_model("dlib")
    with pytest.raises(IdentityModelError, match="no identity model: dlib is not installed"):
        load_identity_model("auto")
    assert load_identity_model("none") is None


# --------------------------------------------------------------------------- ArcFace ONNX


class TinyArcFace(torch.nn.Module):
    """ArcFace's signature ([N, 3, 112, 112] -> [N, 512]) with a few random layers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)
        self.pool = torch.nn.AvgPool2d(5, stride=5)
        self.fc = torch.nn.Linear(4 * 11 * 11, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def export(module: torch.nn.Module, path: Path, inputs: tuple[torch.Tensor, ...], names: list[str]) -> Path:
    pytest.importorskip("onnx")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, str(path), input_names=names, output_names=["out"],
                          dynamic_axes={n: {0: "batch"} for n in names}, dynamo=False)
    return path


@pytest.fixture(scope="module")
def tiny_arcface(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    net = TinyArcFace().eval()
    folder = tmp_path_factory.mktemp("insightface") / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    return net, export(net, folder / "w600k_r50.onnx", (torch.zeros(2, 3, 112, 112),), ["input.1"])


def reference_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity src -> dst by a plain linear solve (x' = a x - b y + tx, y' = b x + a y + ty)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def test_arcface_onnx_preprocessing_matches_insightface_recipe(tiny_arcface):
    from lafr_core.face import ffhq_template

    net, path = tiny_arcface
    model = ArcFaceOnnx(path)
    torch.manual_seed(1)
    crops = torch.rand(3, 256, 256, 3)
    # insightface's norm_crop: 8-bit image, similarity to arcface_dst, warpAffine 112, (x - 127.5) / 127.5, RGB
    matrix = reference_similarity(ffhq_template(256).numpy(), ARCFACE_TEMPLATE_112.numpy())
    u8 = (crops.numpy() * 255 + 0.5).astype(np.uint8)
    warped = np.stack([cv2.warpAffine(im, matrix, (112, 112), borderValue=0.0) for im in u8])
    blob = torch.from_numpy((warped.astype(np.float32) - 127.5) / 127.5).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = net(blob).double()
    got = model.embed(crops)
    assert got.shape == (3, 512)
    assert torch.allclose(got, expected, atol=1e-4)
    # distance is the angle in degrees
    d = model.distances(crops, crops.flip(0))
    cos = torch.nn.functional.cosine_similarity(expected, expected.flip(0), dim=-1).clamp(-1, 1)
    assert torch.allclose(d, torch.rad2deg(torch.arccos(cos)), atol=1e-3)
    assert model.distances(crops, crops).abs().max() < 1e-3
    assert d[0] > 0 and model.threshold is None and model.column == "id_arcface_deg"


def test_arcface_found_in_comfyui_insightface_folder_and_preferred_by_auto(tiny_arcface, monkeypatch):
    _, path = tiny_arcface
    comfy = path.parents[3]  # <tmp>/insightface/models/buffalo_l/w600k_r50.onnx -> ComfyUI stand-in root
    (comfy / "models").mkdir(exist_ok=True)
    (comfy / "models" / "insightface").symlink_to(path.parents[2])
    monkeypatch.setenv("COMFYUI_DIR", str(comfy))
    monkeypatch.delenv("LAFR_ARCFACE", raising=False)
    found, _ = find_arcface()
    assert found is not None and found.name == "w600k_r50.onnx"
    model = load_identity_model("auto")
    assert isinstance(model, ArcFaceOnnx) and model.name == "ArcFace w600k_r50.onnx"


def test_swapper_and_wrong_size_models_are_refused(tmp_path):
    pytest.importorskip("onnxruntime")

    class Swapper(torch.nn.Module):  # inswapper_128's shape: a 128 face and a 512-d source embedding
        def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
            return target * source.mean()

    swapper = export(Swapper(), tmp_path / "inswapper_128.onnx", (torch.zeros(1, 3, 128, 128), torch.zeros(1, 512)), ["target", "source"])
    with pytest.raises(IdentityModelError, match="not an ArcFace face recognizer.*inswapper_128.onnx is a face swapper"):
        ArcFaceOnnx(swapper)
    with pytest.raises(IdentityModelError, match="no ArcFace recognizer"):
        load_identity_model("arcface", arcface=tmp_path / "empty")


def test_arcface_angle_is_nan_free_for_opposite_embeddings():
    model = ArcFaceOnnx.__new__(ArcFaceOnnx)
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    assert torch.allclose(model.distance(a, -a), torch.tensor([180.0, 180.0], dtype=torch.float64))
    assert not math.isnan(float(model.distance(a, a * 3)[0]))


def test_identity_and_eval_import_nothing_optional():
    """Host paths may import these: no diffusers (blocked), and dlib / onnxruntime / lpips only when used."""
    from test_host_free_imports import run_blocked

    out = run_blocked(
        "import lafr_core.identity, lafr_core.eval, lafr_core.eval.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'dlib', 'onnxruntime', 'lpips', 'pytorch_fid', 'skimage'}))"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
