"""Identity distance between two faces: does the restored face still look like the same person?

Two optional backends, both on FFHQ-aligned crops [N, S, S, 3] float 0..1 (what every engine of
this pack restores), both imported only when asked for, never on the node path:

- "dlib": dlib's ResNet face descriptor (128-d; `pip install face_recognition_models dlib-bin`,
  the wheel carries the weights, CC0). Distance: Euclidean; dlib's same-person threshold is 0.6
  (99.38% on LFW). Alignment: dlib's OWN 5-point shape predictor (same package) run inside a fixed
  box, then dlib's 150x150 face chip. Why not feed our crop directly: the ResNet was trained on
  dlib's chips (its landmarks, its scale and 0.25 padding), which are framed differently from
  FFHQ's template; its own predictor reproduces them. Why a fixed box and not dlib's HOG
  detector: on an FFHQ crop the face is always in the same place (HOG returns exactly
  `DLIB_BOX_FFHQ_512` on both test photos' crops), while HOG misses faces on degraded inputs; the
  same box for output and HQ keeps detection out of the measurement.
- "arcface": an insightface ArcFace recognizer in ONNX (e.g. buffalo_l's w600k_r50.onnx, which
  ReActor / InstantID users keep in ComfyUI/models/insightface) run with onnxruntime. The crop is
  warped by the similarity that takes the FFHQ template to ArcFace's 112x112 5-point template
  (insightface's `norm_crop`), normalised as insightface does. Distance: the angle between the
  embeddings in degrees, the "Deg." of the face-restoration papers (GFPGAN, VQFR, LAFR Table 1).

    model = load_identity_model("auto")          # ArcFace if a file is found, else dlib
    d = model.distances(restored_crops, hq_crops)   # [N] float
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from .face.align import estimate_similarity, ffhq_template

# dlib's HOG detector box (left, top, right, bottom) on an FFHQ-aligned 512 crop: measured on the
# crops of both real test photos (astronaut, Grace Hopper), identical on each (the face is fixed).
DLIB_BOX_FFHQ_512 = (111, 171, 379, 439)
DLIB_THRESHOLD = 0.6  # dlib's same-person threshold on the Euclidean descriptor distance
DLIB_FILES = ("shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat")
INSTALL_DLIB = "pip install face_recognition_models dlib-bin  (or pip install 'comfyui-lafr[identity]')"

# insightface's ArcFace 5-point template for 112x112 crops (arcface_dst in its face_align.py).
ARCFACE_TEMPLATE_112 = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=torch.float64,
)
# insightface recognizers (not swappers): buffalo_l / antelopev2 / buffalo_s names, best first.
ARCFACE_FILES = ("w600k_r50.onnx", "glintr100.onnx", "w600k_mbf.onnx")


class IdentityModelError(RuntimeError):
    """An identity backend cannot run here; the message says what to install or where to put what."""


def to_uint8(crops: torch.Tensor) -> np.ndarray:
    """[N, H, W, 3] float 0..1 -> uint8 numpy, rounded (what a saved PNG holds)."""
    if crops.ndim != 4 or crops.shape[-1] != 3:
        raise ValueError(f"identity models take crops [N, H, W, 3], got {tuple(crops.shape)}")
    return (crops.detach().float().cpu().clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


class IdentityModel:
    """Embeds FFHQ-aligned crops and measures how far apart two faces are.

    name: what ran (shown in reports); column: the CSV column; unit: what the number means;
    threshold: the same-person limit in that unit (None when the backend publishes none)."""

    name = ""
    column = ""
    unit = ""
    threshold: float | None = None

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def distances(self, crops_a: torch.Tensor, crops_b: torch.Tensor) -> torch.Tensor:
        """[N] distance between crops_a[i] and crops_b[i]."""
        if crops_a.shape[0] != crops_b.shape[0]:
            raise ValueError(f"need as many faces on both sides, got {crops_a.shape[0]} and {crops_b.shape[0]}")
        return self.distance(self.embed(crops_a), self.embed(crops_b))


# --------------------------------------------------------------------------- dlib


def dlib_model_folder() -> Path | None:
    """face_recognition_models' models/ folder, found without importing the package (its
    __init__ imports pkg_resources, which recent setuptools no longer ships)."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def dlib_problem() -> str | None:
    """None when the dlib backend can run, else why not and how to fix it."""
    try:
        has_dlib = importlib.util.find_spec("dlib") is not None
    except (ImportError, ValueError):
        has_dlib = False
    if not has_dlib:
        return f"dlib is not installed: {INSTALL_DLIB}"
    folder = dlib_model_folder()
    if folder is None:
        return f"face_recognition_models (dlib's weights) is not installed: {INSTALL_DLIB}"
    missing = [name for name in DLIB_FILES if not (folder / name).is_file()]
    if missing:
        return f"{', '.join(missing)} missing from {folder}: reinstall face_recognition_models"
    return None


class DlibIdentity(IdentityModel):
    """dlib's ResNet descriptor (128-d), its 5-point alignment inside the FFHQ face box."""

    name = "dlib ResNet descriptor"
    column = "id_dlib"
    unit = "Euclidean distance of 128-d descriptors (same person < 0.6)"
    threshold = DLIB_THRESHOLD

    def __init__(self) -> None:
        problem = dlib_problem()
        if problem is not None:
            raise IdentityModelError(problem)
        import dlib

        folder = dlib_model_folder()
        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(folder / DLIB_FILES[0]))
        self._net = dlib.face_recognition_model_v1(str(folder / DLIB_FILES[1]))

    def box(self, size: int):
        """DLIB_BOX_FFHQ_512 for a size x size crop (scaled about pixel edges, like the template)."""
        left, top, right, bottom = ((v + 0.5) * size / 512 - 0.5 for v in DLIB_BOX_FFHQ_512)
        return self._dlib.rectangle(round(left), round(top), round(right), round(bottom))

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """FFHQ-aligned crops [N, S, S, 3] 0..1 -> [N, 128] descriptors (float64)."""
        images = to_uint8(crops)
        rect = self.box(images.shape[1])
        out = []
        for image in images:
            image = np.ascontiguousarray(image)
            shape = self._shape(image, rect)
            out.append(np.asarray(self._net.compute_face_descriptor(image, shape), dtype=np.float64))
        return torch.from_numpy(np.stack(out)) if out else torch.zeros(0, 128, dtype=torch.float64)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).norm(dim=-1)


# --------------------------------------------------------------------------- ArcFace (ONNX)


def arcface_folders() -> list[Path]:
    """Where insightface models live: ComfyUI's models/insightface (ReActor, InstantID, IPAdapter
    FaceID), A1111's models/insightface, and insightface's own ~/.insightface/models."""
    home = Path.home()
    comfy = Path(os.environ.get("COMFYUI_DIR") or home / "ComfyUI").expanduser()
    webuis = [Path(p).expanduser() for p in (os.environ.get("A1111_DIR"), os.environ.get("FORGE_DIR")) if p]
    webuis = webuis or [home / "stable-diffusion-webui"]
    return [comfy / "models" / "insightface"] + [w / "models" / "insightface" for w in webuis] + [home / ".insightface" / "models"]


def find_arcface(explicit: str | Path | None = None) -> tuple[Path | None, list[Path]]:
    """(an ArcFace .onnx file or None, the places searched): `explicit` (a file, or a folder to
    search), else $LAFR_ARCFACE, else the insightface folders (any depth: buffalo_l/ etc.)."""
    env = os.environ.get("LAFR_ARCFACE")
    start = explicit if explicit is not None else env
    if start is not None and Path(start).expanduser().is_file():
        return Path(start).expanduser(), [Path(start).expanduser()]
    folders = [Path(start).expanduser()] if start is not None else arcface_folders()
    return first_arcface(folders), folders


def first_arcface(folders: list[Path]) -> Path | None:
    """The best ArcFace recognizer (ARCFACE_FILES order) in any of `folders`, at any depth, or
    None; folders that do not exist are skipped (a host without models/insightface)."""
    for name in ARCFACE_FILES:
        for folder in folders:
            if folder.is_dir():
                hits = sorted(folder.rglob(name))
                if hits:
                    return hits[0]
    return None


def _input_normalisation(path: Path) -> tuple[float, float]:
    """(mean, std) the way insightface's ArcFaceONNX decides: models whose graph starts with
    Sub / Mul nodes normalise inside (0, 1); the others, w600k_r50 among them, take
    (x - 127.5) / 127.5. Without the onnx package the common (127.5, 127.5) is assumed."""
    try:
        import onnx
    except ImportError:
        return 127.5, 127.5
    graph = onnx.load(str(path)).graph
    inside = any(node.name.startswith(("Sub", "_minus")) for node in graph.node[:8]) and any(
        node.name.startswith("Mul") for node in graph.node[:8]
    )
    return (0.0, 1.0) if inside else (127.5, 127.5)


class ArcFaceOnnx(IdentityModel):
    """An insightface ArcFace recognizer (.onnx, input [N, 3, 112, 112], output [N, D])."""

    column = "id_arcface_deg"
    unit = "angle between ArcFace embeddings, degrees (the papers' Deg.)"
    threshold = None

    def __init__(self, path: str | Path, device: str | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise IdentityModelError(f"ArcFace model {path} not found")
        try:
            import onnxruntime as ort
        except ImportError:
            raise IdentityModelError(f"the ArcFace model {path.name} needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu)") from None
        wanted = ["CUDAExecutionProvider"] if device and str(device).startswith("cuda") else []
        providers = [p for p in wanted if p in ort.get_available_providers()] + ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
            raise IdentityModelError(f"{path}: onnxruntime cannot load it ({exc})") from None
        inputs = self.session.get_inputs()
        shape = list(inputs[0].shape) if inputs else []
        if len(inputs) != 1 or len(shape) != 4 or shape[1] != 3 or shape[2:] != [112, 112]:
            got = ", ".join(f"{i.name} {i.shape}" for i in inputs)
            raise IdentityModelError(
                f"{path.name} is not an ArcFace face recognizer (inputs: {got}; ArcFace takes one [N, 3, 112, 112] image). "
                "inswapper_128.onnx is a face swapper and det_10g.onnx a detector: use w600k_r50.onnx from buffalo_l"
            )
        self.input_name = inputs[0].name
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.mean, self.std = _input_normalisation(path)
        self.path = path
        self.name = f"ArcFace {path.name}"

    @staticmethod
    def warps(size: int) -> np.ndarray:
        """The similarity FFHQ crop (size x size) -> ArcFace 112 crop, as a cv2 2x3 matrix."""
        return estimate_similarity(ffhq_template(size)[None], ARCFACE_TEMPLATE_112[None])[0].numpy()

    def preprocess(self, crops: torch.Tensor) -> np.ndarray:
        """FFHQ crops -> the network's input [N, 3, 112, 112] float32: 8-bit crop warped to
        112 (bilinear, black border, as insightface's norm_crop), RGB, (x - mean) / std."""
        images = to_uint8(crops)
        matrix = self.warps(images.shape[1])
        warped = np.stack([cv2.warpAffine(image, matrix, (112, 112), borderValue=0.0) for image in images]) if len(images) else np.zeros((0, 112, 112, 3), np.uint8)
        blob = (warped.astype(np.float32) - self.mean) / self.std
        return np.ascontiguousarray(blob.transpose(0, 3, 1, 2))

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        blob = self.preprocess(crops)
        step = self.fixed_batch or max(1, len(blob))
        outs = [self.session.run(None, {self.input_name: blob[i : i + step]})[0] for i in range(0, len(blob), step)]
        return torch.from_numpy(np.concatenate(outs).astype(np.float64)) if outs else torch.zeros(0, 512, dtype=torch.float64)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1.0, 1.0)
        return torch.rad2deg(torch.arccos(cos))


# --------------------------------------------------------------------------- choosing one

IDENTITY_BACKENDS = ("auto", "dlib", "arcface", "none")


def load_identity_model(backend: str = "auto", arcface: str | Path | None = None, device: str | None = None) -> IdentityModel | None:
    """The identity model to use, or None for "none".

    auto: ArcFace when `arcface` / $LAFR_ARCFACE / an insightface folder has a recognizer, else
    dlib; IdentityModelError (saying what to install) when neither can run.
    dlib / arcface: that backend or IdentityModelError."""
    if backend not in IDENTITY_BACKENDS:
        raise ValueError(f"identity backend must be one of {', '.join(IDENTITY_BACKENDS)}, got {backend!r}")
    if backend == "none":
        return None
    if backend in ("auto", "arcface"):
        found, searched = find_arcface(arcface)
        if found is not None:
            return ArcFaceOnnx(found, device)
        if backend == "arcface" or arcface is not None:
            places = "\n  ".join(map(str, searched))
            raise IdentityModelError(f"no ArcFace recognizer ({', '.join(ARCFACE_FILES)}) found. Searched:\n  {places}")
    problem = dlib_problem()
    if problem is not None:
        raise IdentityModelError(problem if backend == "dlib" else f"no identity model: {problem}; or give an ArcFace .onnx file")
    return DlibIdentity()


def same_person(distance: float, model: IdentityModel) -> bool | None:
    """Whether `distance` is under the model's same-person threshold (None: it has none)."""
    if model.threshold is None or math.isnan(distance):
        return None
    return distance < model.threshold
