"""Seeded synthetic degradation: HQ face -> LQ face, for training pairs and evaluation sets.

The classic blind-face-restoration chain (GFPGAN / Real-ESRGAN order), each stage with its own
probability and parameter range in `DegradeConfig`:

    blur (isotropic / anisotropic / generalised Gaussian kernel) -> motion blur -> downsample
    -> Gaussian noise -> Poisson noise -> JPEG -> upsample back to the input size

Named presets (`PRESETS`, `degrade_preset(image, "codeformer", seed)`), each documented with its
source in its factory's docstring: "lafr" (the trainer's default), "codeformer" and "gfpgan" (the
published face-restoration training recipes), "celeba-test" (the synthetic CelebA-Test set's
rule) and "x4" (a fixed 4x evaluation setting).

Why seeded and numpy-only: the trainer caches VAE latents of each (image, variant) pair, so the
same seed must give the same LQ image in every process, worker and run (a resumed run, another
GPU); the `np.random.Generator` passed in is the only source of randomness, and every random
parameter is drawn in a fixed order whether or not its stage runs, so changing one probability
does not reshuffle the others. JPEG is encoded in memory with OpenCV (a node-path dependency);
no diffusers / peft / torch import, so data-loader workers stay light.

Kernels follow the definitions of basicsr's `random_mixed_kernels` (Real-ESRGAN, GFPGAN and
CodeFormer all use it): anisotropic Gaussian exp(-1/2 x^T S^-1 x) with S = R diag(sx^2, sy^2) R^T,
generalised Gaussian exp(-1/2 (x^T S^-1 x)^beta), both sampled on a square grid and normalised
to sum 1. The isotropic kernel keeps OpenCV's separable GaussianBlur, so "lafr" pairs (and the
trainer's latent caches) are unchanged by the new kernel types, whose parameters are drawn after
all the old ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Sequence

import cv2
import numpy as np

DOWN_MODES = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
UP_MODES = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso")


def _help(text: str, default):
    """A dataclass field with help text (read by train/config.py for the CLI)."""
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class DegradeConfig:
    """Probabilities and ranges of each degradation stage. Ranges are inclusive (lo, hi).

    Defaults follow the GFPGAN / Real-ESRGAN face recipes, widened to the ranges the LAFR issue
    asks for (downsampling x1-x12, JPEG 30-95). Noise sigmas are in 8-bit units (0..255).
    """

    gaussian_blur_prob: float = _help("probability of a Gaussian-family blur (kernel type from kernel_types)", 0.7)
    gaussian_blur_sigma: tuple[float, float] = _help("Gaussian blur sigma range in pixels (both axes of anisotropic kernels)", (0.1, 10.0))
    blur_kernel_size: int = _help("largest blur kernel side (odd); GFPGAN uses 41", 41)
    motion_blur_prob: float = _help("probability of a linear motion blur", 0.2)
    motion_blur_length: tuple[int, int] = _help("motion blur length range in pixels", (3, 21))
    downsample_prob: float = _help("probability of downsampling", 1.0)
    downsample_scale: tuple[float, float] = _help("downsampling factor range (x1 .. x12; below 1 enlarges, as GFPGAN's 0.8)", (1.0, 12.0))
    downsample_modes: tuple[str, ...] = _help("interpolations to pick from: area, bilinear, bicubic", ("area", "bilinear", "bicubic"))
    gaussian_noise_prob: float = _help("probability of additive Gaussian noise", 0.5)
    gaussian_noise_sigma: tuple[float, float] = _help("Gaussian noise sigma range, 8-bit units", (1.0, 20.0))
    poisson_noise_prob: float = _help("probability of Poisson (shot) noise", 0.2)
    poisson_peak: tuple[float, float] = _help("Poisson photon count of a white pixel (lower = noisier)", (20.0, 200.0))
    jpeg_prob: float = _help("probability of JPEG compression", 0.8)
    jpeg_quality: tuple[int, int] = _help("JPEG quality range", (30, 95))
    upsample_mode: str = _help("interpolation back to the input size: bilinear or bicubic", "bicubic")
    kernel_types: tuple[str, ...] = _help("blur kernels to pick from: iso, aniso, generalized_iso, generalized_aniso", ("iso",))
    kernel_probs: tuple[float, ...] = _help("probability of each kernel type (same order, summing to 1)", (1.0,))
    generalized_beta: tuple[float, float] = _help("generalised Gaussian shape range (beta 1 = Gaussian; Real-ESRGAN: 0.5..4)", (0.5, 4.0))

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # YAML gives lists; keep the dataclass hashable
                object.__setattr__(self, f.name, tuple(value))
        for name in ("gaussian_blur_prob", "motion_blur_prob", "downsample_prob", "gaussian_noise_prob", "poisson_noise_prob", "jpeg_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"DegradeConfig.{name} must be a probability in [0, 1], got {p}")
        checks = {
            "gaussian_blur_sigma": (0.0, math.inf),
            "motion_blur_length": (1, math.inf),
            "downsample_scale": (0.5, 64.0),
            "gaussian_noise_sigma": (0.0, 255.0),
            "poisson_peak": (1e-3, math.inf),
            "jpeg_quality": (1, 100),
            "generalized_beta": (0.05, 16.0),
        }
        for name, (lo, hi) in checks.items():
            pair = getattr(self, name)
            if len(pair) != 2 or not lo <= pair[0] <= pair[1] <= hi:
                raise ValueError(f"DegradeConfig.{name} must be (lo, hi) with {lo} <= lo <= hi <= {hi}, got {pair}")
        if self.blur_kernel_size < 3 or self.blur_kernel_size % 2 == 0:
            raise ValueError(f"DegradeConfig.blur_kernel_size must be odd and >= 3, got {self.blur_kernel_size}")
        if self.motion_blur_length[1] > self.blur_kernel_size:
            raise ValueError(
                f"DegradeConfig.motion_blur_length {self.motion_blur_length} exceeds blur_kernel_size {self.blur_kernel_size}"
            )
        bad = [m for m in self.downsample_modes if m not in DOWN_MODES]
        if not self.downsample_modes or bad:
            raise ValueError(f"DegradeConfig.downsample_modes must be a non-empty subset of {sorted(DOWN_MODES)}, got {self.downsample_modes}")
        bad = [k for k in self.kernel_types if k not in KERNEL_TYPES]
        if not self.kernel_types or bad:
            raise ValueError(f"DegradeConfig.kernel_types must be a non-empty subset of {KERNEL_TYPES}, got {self.kernel_types}")
        probs = self.kernel_probs
        if len(probs) != len(self.kernel_types) or min(probs) < 0 or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise ValueError(f"DegradeConfig.kernel_probs must give one probability per kernel type summing to 1, got {probs} for {self.kernel_types}")
        if self.upsample_mode not in UP_MODES:
            raise ValueError(f"DegradeConfig.upsample_mode must be one of {sorted(UP_MODES)}, got {self.upsample_mode!r}")

    @classmethod
    def celeba_x4(cls) -> "DegradeConfig":
        """"x4": a fixed 4x evaluation setting (our own choice, not a published protocol): blur
        sigma 1.5, bicubic x4 down, Gaussian noise sigma 5, JPEG 75, bicubic up. Only the noise
        pattern depends on the seed, so every face is degraded equally hard."""
        return cls(
            gaussian_blur_prob=1.0, gaussian_blur_sigma=(1.5, 1.5),
            motion_blur_prob=0.0,
            downsample_prob=1.0, downsample_scale=(4.0, 4.0), downsample_modes=("bicubic",),
            gaussian_noise_prob=1.0, gaussian_noise_sigma=(5.0, 5.0),
            poisson_noise_prob=0.0,
            jpeg_prob=1.0, jpeg_quality=(75, 75),
            upsample_mode="bicubic",
        )  # fmt: skip

    @classmethod
    def lafr(cls) -> "DegradeConfig":
        """"lafr": the trainer's default (the dataclass defaults): GFPGAN / Real-ESRGAN stages
        widened to the ranges the LAFR issue asked for (isotropic blur sigma 0.1-10 p=0.7, motion
        blur p=0.2, down x1-x12 area/bilinear/bicubic, Gaussian noise 1-20 p=0.5, Poisson p=0.2,
        JPEG 30-95 p=0.8, bicubic up)."""
        return cls()

    @classmethod
    def codeformer(cls) -> "DegradeConfig":
        """"codeformer": CodeFormer's stage-III training degradation, sczhou/CodeFormer
        options/CodeFormer_stage3.yml (FFHQBlindJointDataset, basicsr/data/ffhq_blind_dataset.py):
        blur_kernel_size 41, kernel_list [iso, aniso] with kernel_prob [0.5, 0.5], blur_sigma
        [0.1, 10] (both axes, rotation -pi..pi), downsample_range [1, 12] (cv2 INTER_LINEAR),
        noise_range [0, 15] (8-bit sigma), jpeg_range [60, 100], INTER_LINEAR back to 512; every
        stage always runs. Its motion kernels are off (use_motion_kernel forced False).
        CodeFormer's stage II uses a larger one (blur [1, 15], down [4, 30], noise [0, 20],
        JPEG [30, 80]): `replace(DegradeConfig.codeformer(), ...)` gives it."""
        return cls(**_BASICSR_FACE, downsample_scale=(1.0, 12.0), gaussian_noise_sigma=(0.0, 15.0))

    @classmethod
    def gfpgan(cls) -> "DegradeConfig":
        """"gfpgan": GFPGAN's training degradation, TencentARC/GFPGAN options/train_gfpgan_v1.yml:
        blur_kernel_size 41, kernel_list [iso, aniso] with kernel_prob [0.5, 0.5], blur_sigma
        [0.1, 10], downsample_range [0.8, 8], noise_range [0, 20], jpeg_range [60, 100], linear
        resizes, every stage always runs. (GFPGAN also jitters colour, p=0.3, and greys 1% of the
        faces; those change colours, not sharpness, and are left out.) This is the recipe
        OSEDiff-face style face trainers call "CodeFormer-like" (blur 0.1-10, down 0.8-8, noise
        0-20, JPEG 60-100)."""
        return cls(**_BASICSR_FACE, downsample_scale=(0.8, 8.0), gaussian_noise_sigma=(0.0, 20.0))

    @classmethod
    def celeba_test(cls) -> "DegradeConfig":
        """"celeba-test": the rule of the synthetic CelebA-Test set (3,000 CelebA-HQ test faces)
        that GFPGAN introduced and CodeFormer, VQFR, RestoreFormer++ and the LAFR paper (Tab. 1)
        report on: "the generation way is the same as that during training" (GFPGAN paper §4.1),
        i.e. the "gfpgan" ranges, one random draw per face. The factor is drawn per face in
        [0.8, 8] (the LAFR paper describes the set as "4x downscaling", about its mean); pass the
        face index as the seed to make a fixed, reproducible set. For the published set itself,
        evaluate on its LQ/HQ pairs."""
        return cls.gfpgan()

    @classmethod
    def preset(cls, name: str) -> "DegradeConfig":
        """A named preset (see `PRESETS`); "random" is the old name of "lafr"."""
        factory = PRESETS.get(ALIASES.get(name, name))
        if factory is None:
            raise ValueError(f"unknown degradation preset {name!r}; choose one of {sorted(PRESETS)}")
        return factory()

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# What GFPGAN's and CodeFormer's basicsr face datasets share: every stage always runs, a 41-px
# iso/aniso kernel, linear down/up, no motion blur or Poisson noise, JPEG 60-100.
_BASICSR_FACE = dict(
    gaussian_blur_prob=1.0, gaussian_blur_sigma=(0.1, 10.0), blur_kernel_size=41,
    kernel_types=("iso", "aniso"), kernel_probs=(0.5, 0.5),
    motion_blur_prob=0.0, motion_blur_length=(3, 21),
    downsample_prob=1.0, downsample_modes=("bilinear",),
    gaussian_noise_prob=1.0, poisson_noise_prob=0.0,
    jpeg_prob=1.0, jpeg_quality=(60, 100),
    upsample_mode="bilinear",
)  # fmt: skip

PRESETS = {
    "lafr": DegradeConfig.lafr,
    "codeformer": DegradeConfig.codeformer,
    "gfpgan": DegradeConfig.gfpgan,
    "celeba-test": DegradeConfig.celeba_test,
    "x4": DegradeConfig.celeba_x4,
}
ALIASES = {"random": "lafr"}


@dataclass(frozen=True)
class DegradeRecord:
    """What was applied to one image (None: that stage did not run). For logs and tests."""

    gaussian_sigma: float | None
    motion_length: int | None
    motion_angle: float | None
    scale: float | None
    down_mode: str | None
    noise_sigma: float | None
    poisson_peak: float | None
    jpeg_quality: int | None
    kernel_type: str | None = None  # blur kernel (None: no blur)
    sigma_y: float | None = None  # second axis of an anisotropic kernel (gaussian_sigma is the first)
    kernel_angle: float | None = None  # rotation of the first axis, radians
    beta: float | None = None  # shape of a generalised Gaussian kernel


# --------------------------------------------------------------------------- the stages


def gaussian_blur(image: np.ndarray, sigma: float, max_kernel: int) -> np.ndarray:
    """Isotropic Gaussian blur; kernel side 2*ceil(3 sigma)+1, capped at `max_kernel`."""
    k = min(max_kernel, 2 * math.ceil(3 * sigma) + 1)
    return cv2.GaussianBlur(image, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def kernel_covariance(sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """S = R(theta) diag(sx^2, sy^2) R(theta)^T: the kernel's covariance (x right, y down)."""
    c, s = math.cos(theta), math.sin(theta)
    rotation = np.array([[c, -s], [s, c]])
    return rotation @ np.diag([sigma_x**2, sigma_y**2]) @ rotation.T


def blur_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float = 1.0) -> np.ndarray:
    """A [size, size] float32 kernel summing to 1: exp(-1/2 (x^T S^-1 x)^beta) on the integer
    grid centred on the middle pixel (beta 1: the anisotropic Gaussian; sigma_x == sigma_y:
    isotropic). As basicsr's bivariate kernels, so the presets blur as their sources do."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and >= 1, got {size}")
    half = size // 2
    axis = np.arange(-half, half + 1, dtype=np.float64)
    xx, yy = np.meshgrid(axis, axis)
    grid = np.stack([xx, yy], axis=-1)
    inverse = np.linalg.inv(kernel_covariance(sigma_x, sigma_y, theta))
    quadratic = np.einsum("hwi,ij,hwj->hw", grid, inverse, grid)
    kernel = np.exp(-0.5 * np.power(quadratic, beta))
    return (kernel / kernel.sum()).astype(np.float32)


def motion_kernel(length: int, angle_deg: float) -> np.ndarray:
    """A normalised line of `length` pixels through the centre of a square kernel at `angle_deg`."""
    size = length if length % 2 else length + 1
    kernel = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    dx, dy = math.cos(math.radians(angle_deg)), -math.sin(math.radians(angle_deg))
    for t in np.linspace(-(length - 1) / 2, (length - 1) / 2, num=4 * length):
        x, y = int(round(c + t * dx)), int(round(c + t * dy))
        kernel[y, x] = 1.0
    return kernel / kernel.sum()


def motion_blur(image: np.ndarray, length: int, angle_deg: float) -> np.ndarray:
    return cv2.filter2D(image, -1, motion_kernel(length, angle_deg), borderType=cv2.BORDER_REFLECT_101)


def resize(image: np.ndarray, size_hw: tuple[int, int], mode: int) -> np.ndarray:
    return cv2.resize(image, (size_hw[1], size_hw[0]), interpolation=mode)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip in memory (RGB float 0..1 in and out, 8-bit in between, as a real file)."""
    bgr = cv2.cvtColor(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError(f"OpenCV could not JPEG-encode an image of shape {image.shape}")
    decoded = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


# --------------------------------------------------------------------------- the chain


def _uniform(rng: np.random.Generator, pair: Sequence[float]) -> float:
    return float(rng.uniform(pair[0], pair[1])) if pair[1] > pair[0] else float(pair[0])


def _integer(rng: np.random.Generator, pair: Sequence[int]) -> int:
    return int(rng.integers(pair[0], pair[1] + 1))


def degrade(
    image: np.ndarray, rng: np.random.Generator | int | Sequence[int], config: DegradeConfig | None = None
) -> tuple[np.ndarray, DegradeRecord]:
    """Degrade one RGB image [H, W, 3] float32 0..1; returns (LQ of the same shape, record).

    `rng` is a numpy Generator or a seed (int or int sequence, e.g. (seed, image, variant)).
    """
    config = config or DegradeConfig()
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"degrade expects an RGB image [H, W, 3], got shape {image.shape}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    h, w = image.shape[:2]
    # 1. every random parameter, in a fixed order (stable under probability changes)
    do_gauss = rng.random() < config.gaussian_blur_prob
    sigma = _uniform(rng, config.gaussian_blur_sigma)
    do_motion = rng.random() < config.motion_blur_prob
    length = _integer(rng, config.motion_blur_length)
    angle = float(rng.uniform(0.0, 180.0))
    do_down = rng.random() < config.downsample_prob
    scale = _uniform(rng, config.downsample_scale)
    down_mode = config.downsample_modes[int(rng.integers(len(config.downsample_modes)))]
    do_noise = rng.random() < config.gaussian_noise_prob
    noise_sigma = _uniform(rng, config.gaussian_noise_sigma)
    do_poisson = rng.random() < config.poisson_noise_prob
    peak = _uniform(rng, config.poisson_peak)
    do_jpeg = rng.random() < config.jpeg_prob
    quality = _integer(rng, config.jpeg_quality)
    # drawn after the older parameters, so iso-only configs degrade exactly as before
    kernel_type = config.kernel_types[0]
    sigma_y, theta, beta = sigma, 0.0, 1.0
    if config.kernel_types != ("iso",):
        kernel_type = config.kernel_types[int(rng.choice(len(config.kernel_types), p=np.asarray(config.kernel_probs) / sum(config.kernel_probs)))]
        sigma_y = _uniform(rng, config.gaussian_blur_sigma)
        theta = float(rng.uniform(-math.pi, math.pi))
        lo, hi = config.generalized_beta  # basicsr: half the draws below 1 (heavy tails), half above
        low_side = rng.random() < 0.5
        beta = _uniform(rng, (lo, min(1.0, hi)) if low_side else (max(1.0, lo), hi))
        if not kernel_type.endswith("aniso"):
            sigma_y, theta = sigma, 0.0
        if not kernel_type.startswith("generalized"):
            beta = 1.0

    # 2. apply
    out = np.ascontiguousarray(image, dtype=np.float32)
    if do_gauss:
        if kernel_type == "iso":
            out = gaussian_blur(out, sigma, config.blur_kernel_size)
        else:
            out = cv2.filter2D(out, -1, blur_kernel(config.blur_kernel_size, sigma, sigma_y, theta, beta), borderType=cv2.BORDER_REFLECT_101)
    if do_motion:
        out = motion_blur(out, length, angle)
    if do_down:
        small = (max(1, round(h / scale)), max(1, round(w / scale)))
        out = resize(out, small, DOWN_MODES[down_mode])
    if do_noise:
        out = out + rng.normal(0.0, noise_sigma / 255.0, size=out.shape).astype(np.float32)
    if do_poisson:
        out = rng.poisson(np.clip(out, 0.0, 1.0) * peak).astype(np.float32) / np.float32(peak)
    out = np.clip(out, 0.0, 1.0)
    if do_jpeg:
        out = jpeg(out, quality)
    if out.shape[:2] != (h, w):
        out = resize(out, (h, w), UP_MODES[config.upsample_mode])
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    record = DegradeRecord(
        gaussian_sigma=sigma if do_gauss else None,
        motion_length=length if do_motion else None,
        motion_angle=angle if do_motion else None,
        scale=scale if do_down else None,
        down_mode=down_mode if do_down else None,
        noise_sigma=noise_sigma if do_noise else None,
        poisson_peak=peak if do_poisson else None,
        jpeg_quality=quality if do_jpeg else None,
        kernel_type=kernel_type if do_gauss else None,
        sigma_y=sigma_y if do_gauss else None,
        kernel_angle=theta if do_gauss else None,
        beta=beta if do_gauss else None,
    )
    return out, record


def degrade_preset(image: np.ndarray, preset: str = "lafr", seed: int | Sequence[int] | np.random.Generator = 0) -> tuple[np.ndarray, DegradeRecord]:
    """Degrade `image` ([H, W, 3] float32 0..1) with a named preset (see `PRESETS`); the same
    (image, preset, seed) always gives the same LQ image. Seed an evaluation set per face, e.g.
    `seed=(base_seed, face_index)`."""
    return degrade(image, seed, DegradeConfig.preset(preset))
