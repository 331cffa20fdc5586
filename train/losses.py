"""Stage-2 loss (paper §2.4): MSE + 2 LPIPS + lambda_id (1 - cos CLIP image embedding)
+ lambda_fs (1 - cos facial-structure features), on the decoded restored face vs the HQ face.

The three encoders are pluggable: `Stage2Loss` takes any modules with these contracts (images
[b, 3, H, W] in -1..1):
    lpips(x, y) -> [b] or [b, 1, 1, 1] perceptual distance
    identity(x) -> [b, d] embedding        structure(x) -> [b, d] features
`load_loss_encoders` is the default factory (real weights: the lpips package, IP-Adapter's
CLIPVisionModelWithProjection, a D3DFR-style ResNet-50 3DMM regressor); tests pass a factory that
builds tiny random ones. A loss whose lambda is 0 loads nothing; a loss whose weights are missing
fails at start-up with `MissingWeights`, naming the file and the way out, before any base model
is loaded or any step is spent.

Every encoder is frozen. The HQ side is computed without gradients (it is the target); the
restored side keeps its graph so the gradient reaches the LoRA through the VAE decoder.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Deep3DFaceRecon's coefficient layout (id 80, exp 64, tex 80, angle 3, gamma 27, trans 3 = 257).
D3DFR_SPLITS = {"id": (0, 80), "exp": (80, 144), "tex": (144, 224), "angle": (224, 227), "gamma": (227, 254), "trans": (254, 257)}
# Structure = shape, expression and pose; texture and lighting are appearance, not structure.
STRUCTURE_PARTS = ("id", "exp", "angle")
D3DFR_INPUT = 224


class MissingWeights(FileNotFoundError):
    """An enabled loss cannot find its weights; the message names the file and the fix."""


@dataclass
class LossEncoders:
    lpips: nn.Module | None = None
    identity: nn.Module | None = None
    structure: nn.Module | None = None


def _frozen(module: nn.Module | None) -> nn.Module | None:
    if module is not None:
        module.requires_grad_(False).eval()
    return module


# --------------------------------------------------------------------------- LPIPS


class LpipsDistance(nn.Module):
    """lpips.LPIPS (inputs -1..1, its own scaling layer) -> [b] distance."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x, y, normalize=False).flatten(1).mean(1)


def _torchvision_url(net: str) -> str:
    import torchvision

    weights = {"vgg": torchvision.models.VGG16_Weights, "alex": torchvision.models.AlexNet_Weights}[net]
    return weights.IMAGENET1K_V1.url


def lpips_trunk_file(net: str) -> Path:
    """Where torchvision keeps the LPIPS trunk's ImageNet weights (the torch hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(_torchvision_url(net)).name


def load_lpips(net: str = "vgg", backbone: str | None = None) -> LpipsDistance:
    """LPIPS with the package's calibrated linear layers and the torchvision trunk weights from
    `backbone`, the torch hub cache, or (with internet) a download into that cache."""
    try:
        import lpips
    except ImportError:
        raise MissingWeights("the LPIPS loss needs the lpips package: pip install lpips (or set --lambda_lpips 0)") from None
    with warnings.catch_warnings():  # lpips calls torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    path = Path(backbone) if backbone else lpips_trunk_file(net)
    url = _torchvision_url(net)
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
    elif backbone:
        raise MissingWeights(f"LPIPS trunk weights {str(path)!r} not found (--lpips_backbone); download {url} or set --lambda_lpips 0")
    else:
        try:
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True, progress=False)
        except Exception as err:  # offline: say which file to put where
            raise MissingWeights(
                f"LPIPS ({net}) needs the torchvision ImageNet weights {str(path)!r}, which are missing and could "
                f"not be downloaded ({type(err).__name__}). Download {url} to that path, pass --lpips_backbone FILE, "
                "or set --lambda_lpips 0"
            ) from None
    _load_lpips_trunk(model.net, state, path)
    return _frozen(LpipsDistance(model))


def _load_lpips_trunk(trunk: nn.Module, state: dict, source: Path) -> None:
    """lpips splits torchvision's `features` into slices whose children keep their indices:
    `slice2.5.weight` is torchvision's `features.5.weight`."""
    target = {}
    for name in trunk.state_dict():
        _, index, kind = name.split(".")
        key = f"features.{index}.{kind}"
        if key not in state:
            raise MissingWeights(f"{source}: not torchvision {type(trunk).__name__} weights (no {key!r})")
        target[name] = state[key]
    trunk.load_state_dict(target, strict=True)


# --------------------------------------------------------------------------- CLIP identity


class ClipIdentity(nn.Module):
    """CLIP image embedding of a face: resize to the encoder's size, CLIP-normalise, project."""

    def __init__(self, model: nn.Module, image_size: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.image_size = image_size or model.config.image_size
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate((x.float() + 1) / 2, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        param = next(self.model.parameters())
        return self.model(pixel_values=x.to(param.dtype)).image_embeds


def load_clip_identity(source: str, subfolder: str = "") -> ClipIdentity:
    """IP-Adapter's image encoder (or any CLIPVisionModelWithProjection) from a folder or hub id."""
    from transformers import CLIPVisionModelWithProjection

    local = Path(source)
    if local.exists() and not (local / subfolder / "config.json").is_file():
        raise MissingWeights(
            f"CLIP image encoder: {str(local / subfolder / 'config.json')!r} not found; pass --clip_encoder FOLDER "
            "(with --clip_subfolder '' if the folder itself holds config.json) or set --lambda_id 0"
        )
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(source, subfolder=subfolder or None)
    except (OSError, ValueError) as err:
        where = f"{source}/{subfolder}" if subfolder else source
        raise MissingWeights(
            f"CLIP image encoder weights {where!r} could not be loaded ({type(err).__name__}: {str(err)[:200]}). "
            f"Download them (huggingface-cli download {source} --include '{subfolder}/*' if it is a hub id), "
            "pass --clip_encoder LOCAL_FOLDER, or set --lambda_id 0"
        ) from None
    return _frozen(ClipIdentity(model))


# --------------------------------------------------------------------------- facial structure


class Regressor3DMM(nn.Module):
    """D3DFR's recon net: a ResNet-50 trunk (global pooled, 2048-d) and a 257-d linear head."""

    def __init__(self, trunk: nn.Module, feature_dim: int = 2048, coeffs: int = 257) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(feature_dim, coeffs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x).flatten(1))


class FaceStructure(nn.Module):
    """3DMM shape/expression/pose coefficients of a face, 0..1 RGB as D3DFR takes it.

    align="d3dfr" (default): the face is cut the way Deep3DFaceRecon's own preprocessing cuts
    it (train/d3dfr_align.py) from its 5 landmarks: `landmarks` [b, 5, 2] when given, else the
    FFHQ template of a square aligned crop. align="resize": the whole crop resized (the old
    behaviour; out of D3DFR's distribution, kept for regressors trained that way)."""

    def __init__(self, regressor: nn.Module, input_size: int = D3DFR_INPUT, parts: tuple[str, ...] = STRUCTURE_PARTS, align: str = "d3dfr") -> None:
        super().__init__()
        if align not in ("d3dfr", "resize"):
            raise ValueError(f"FaceStructure align must be 'd3dfr' or 'resize', got {align!r}")
        self.regressor, self.input_size, self.align = regressor, input_size, align
        self.index = [i for part in parts for i in range(*D3DFR_SPLITS[part])]

    def crop(self, x: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """[b, 3, H, W] in -1..1 -> the regressor's input [b, 3, S, S] in 0..1."""
        x = (x.float() + 1) / 2
        if self.align == "resize":
            return F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True)
        from lafr_core.face.align import ffhq_template

        from .d3dfr_align import align_d3dfr

        if landmarks is None:
            if x.shape[-1] != x.shape[-2]:
                raise ValueError(f"FaceStructure needs landmarks for non-square images, got {tuple(x.shape[-2:])}")
            landmarks = ffhq_template(x.shape[-1]).float()
        return align_d3dfr(x, landmarks.cpu(), self.input_size).clamp(0, 1)

    def forward(self, x: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        x = self.crop(x, landmarks)
        param = next(self.regressor.parameters())
        coeffs = self.regressor(x.to(param.dtype))
        if coeffs.shape[-1] != 257:
            raise ValueError(f"the 3DMM regressor must output 257 D3DFR coefficients, got {coeffs.shape[-1]}")
        return coeffs[:, self.index]


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("net_recon", "state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise MissingWeights(f"{path}: not a state dict (got {type(obj).__name__})")
    return obj


def d3dfr_to_regressor_state(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Deep3DFaceRecon (`backbone.*` + 7 conv1x1 `final_layers.*`) or a torchvision ResNet-50
    with a 257-d `fc` -> Regressor3DMM keys (`trunk.*`, `head.*`)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("final_layers.") for k in state):
        layers = sorted({int(k.split(".")[1]) for k in state if k.startswith("final_layers.")})
        weight = torch.cat([state[f"final_layers.{i}.weight"].flatten(1) for i in layers])
        bias = torch.cat([state[f"final_layers.{i}.bias"] for i in layers])
        trunk = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    elif "fc.weight" in state:
        weight, bias = state["fc.weight"], state["fc.bias"]
        trunk = {k: v for k, v in state.items() if not k.startswith("fc.")}
    else:
        raise MissingWeights(f"{source}: neither a Deep3DFaceRecon checkpoint (final_layers.*) nor a ResNet-50 with a 257-d fc")
    if weight.shape != (257, 2048):
        raise MissingWeights(f"{source}: the 3DMM head is {tuple(weight.shape)}, expected (257, 2048)")
    out = {f"trunk.{k}": v for k, v in trunk.items() if not k.startswith("fc.")}
    out["head.weight"], out["head.bias"] = weight, bias
    return out


def load_face_structure(path: str | None) -> FaceStructure:
    """A D3DFR-style ResNet-50 3DMM regressor from a local checkpoint (weights_only=True)."""
    if not path:
        raise MissingWeights(
            "the facial-structure loss needs a D3DFR 3DMM regressor: pass --fs_checkpoint "
            "(e.g. Deep3DFaceRecon_pytorch checkpoints/<name>/epoch_20.pth) or set --lambda_fs 0"
        )
    source = Path(path)
    if not source.is_file():
        raise MissingWeights(f"facial-structure regressor {str(source)!r} not found (--fs_checkpoint); fix the path or set --lambda_fs 0")
    import torchvision

    trunk = torchvision.models.resnet50(weights=None)
    trunk.fc = nn.Identity()
    regressor = Regressor3DMM(trunk)
    state = d3dfr_to_regressor_state(_read_state(source), source)
    missing, unexpected = regressor.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MissingWeights(f"{source}: weights do not fit a ResNet-50 3DMM regressor: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return _frozen(FaceStructure(regressor))


# --------------------------------------------------------------------------- factory and loss


def load_loss_encoders(config) -> LossEncoders:
    """The default factory: real encoders for the losses whose lambda is > 0 (config: Stage2Config)."""
    return LossEncoders(
        lpips=load_lpips(config.lpips_net, config.lpips_backbone) if config.lambda_lpips > 0 else None,
        identity=load_clip_identity(config.clip_encoder, config.clip_subfolder) if config.lambda_id > 0 else None,
        structure=load_face_structure(config.fs_checkpoint) if config.lambda_fs > 0 else None,
    )


class Stage2Loss(nn.Module):
    """lambda_mse MSE + lambda_lpips LPIPS + lambda_id (1 - cos id) + lambda_fs (1 - cos fs)."""

    def __init__(self, encoders: LossEncoders, lambda_mse: float = 1.0, lambda_lpips: float = 2.0, lambda_id: float = 1.0, lambda_fs: float = 1.0) -> None:
        super().__init__()
        needed = {"lpips": lambda_lpips, "identity": lambda_id, "structure": lambda_fs}
        absent = [name for name, weight in needed.items() if weight > 0 and getattr(encoders, name) is None]
        if absent:
            raise ValueError(f"Stage2Loss: encoder(s) {absent} are missing but their lambda is > 0")
        self.lpips = _frozen(encoders.lpips) if lambda_lpips > 0 else None
        self.identity = _frozen(encoders.identity) if lambda_id > 0 else None
        self.structure = _frozen(encoders.structure) if lambda_fs > 0 else None
        self.weights = {"mse": lambda_mse, "lpips": lambda_lpips, "id": lambda_id, "fs": lambda_fs}

    @staticmethod
    def _cosine_distance(encoder: nn.Module, restored: torch.Tensor, target: torch.Tensor, *extra) -> torch.Tensor:
        with torch.no_grad():
            ref = encoder(target, *extra).float()
        return (1 - F.cosine_similarity(encoder(restored, *extra).float(), ref, dim=-1)).mean()

    def forward(self, restored: torch.Tensor, target: torch.Tensor, landmarks: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """restored, target: [b, 3, H, W] in -1..1; landmarks [b, 5, 2] of the faces in them
        (for the structure encoder's alignment; default: the FFHQ template). Returns (total,
        {part: unweighted value})."""
        restored, target = restored.float(), target.float()
        parts = {"mse": F.mse_loss(restored, target)}
        if self.lpips is not None:
            parts["lpips"] = self.lpips(restored, target).float().mean()
        if self.identity is not None:
            parts["id"] = self._cosine_distance(self.identity, restored, target)
        if self.structure is not None:
            parts["fs"] = self._cosine_distance(self.structure, restored, target, landmarks)
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, parts
