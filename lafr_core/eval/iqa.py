"""DISTS, MUSIQ, CLIP-IQA and MANIQA through pyiqa, used only when pyiqa and their weights are here.

These are the learned columns of the LAFR paper's Table 1 beyond LPIPS and FID; face-restoration
papers score them with pyiqa (chaofengc/IQA-PyTorch) at its default settings: `dists`,
`musiq` (KonIQ-10k head), `clipiqa` (CLIP RN50, antonym prompts), `maniqa` (KonIQ-10k head).
pyiqa is not a dependency of this pack (it pulls in timm, transformers, datasets, ...): a user
who wants these columns runs `pip install pyiqa` and puts the weights in its cache once.

An evaluation never downloads: each metric is built only when every file it reads is already in
the torch hub cache (pyiqa keeps its checkpoints in <hub>/pyiqa, CLIP's in <hub>/clip, torchvision's
in <hub>/checkpoints; MANIQA's ViT trunk comes from the Hugging Face cache through timm), and it is
built with downloads switched off (`no_downloads`), so a missing file becomes a one-line note and
the run goes on without that column. pyiqa itself would load its checkpoints with
torch.load(weights_only=False); while a metric is built, torch.load is forced to
weights_only=True (`tensors_only_loads`), so a checkpoint holding code is refused and named.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

HF_TIMM_VIT = "models--timm--vit_base_patch8_224.augreg2_in21k_ft_in1k"  # timm's default tag of MANIQA's trunk


@dataclass(frozen=True)
class IqaSpec:
    column: str  # our CSV column
    pyiqa_name: str  # pyiqa.create_metric name
    label: str  # the paper's column name
    full_reference: bool  # scored against the HQ face (DISTS) or on the face alone
    lower_is_better: bool
    hub_files: tuple[str, ...]  # paths under torch.hub.get_dir() that must exist
    hf_repos: tuple[str, ...] = ()  # folders under the Hugging Face hub cache that must exist


IQA_METRICS = {
    spec.column: spec
    for spec in (
        IqaSpec("dists", "dists", "DISTS", True, True, ("pyiqa/DISTS_weights-f5e65c96.pth", "checkpoints/vgg16-397923af.pth")),
        IqaSpec("musiq", "musiq", "MUSIQ", False, False, ("pyiqa/musiq_koniq_ckpt-e95806b9.pth",)),
        IqaSpec("clipiqa", "clipiqa", "CLIP-IQA", False, False, ("clip/RN50.pt",)),
        IqaSpec("maniqa", "maniqa", "MANIQA", False, False, ("pyiqa/ckpt_koniq10k.pt",), (HF_TIMM_VIT,)),
    )
}


@dataclass
class IqaMetric:
    """One pyiqa metric: (output [B, H, W, 3] 0..1, HQ or None) -> [B] float64."""

    spec: IqaSpec
    model: Callable[..., torch.Tensor]
    device: str | torch.device = "cpu"

    @torch.no_grad()
    def __call__(self, output: torch.Tensor, hq: torch.Tensor | None = None) -> torch.Tensor:
        x = output.permute(0, 3, 1, 2).float().to(self.device)
        if self.spec.full_reference:
            if hq is None:
                raise ValueError(f"{self.spec.label} compares each face with its HQ face")
            scores = self.model(x, hq.permute(0, 3, 1, 2).float().to(self.device))
        else:
            scores = self.model(x)
        return torch.as_tensor(scores).reshape(output.shape[0], -1)[:, 0].double().cpu()


def hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def missing_files(spec: IqaSpec) -> list[Path]:
    """The files (or Hugging Face cache folders) `spec` needs that are not here."""
    hub = Path(torch.hub.get_dir())
    needed = [hub / f for f in spec.hub_files] + [hf_hub_cache() / r for r in spec.hf_repos]
    return [p for p in needed if not p.exists()]


class DownloadRefused(RuntimeError):
    pass


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """Any download pyiqa, torchvision, CLIP or timm would start raises DownloadRefused instead."""
    import urllib.request

    def refuse(*args, **kwargs):
        raise DownloadRefused(f"lafr eval never downloads (asked for {args[0] if args else kwargs})")

    patches = [(torch.hub, "download_url_to_file"), (urllib.request, "urlopen")]
    try:
        import pyiqa.utils.download_util as pyiqa_download

        patches.append((pyiqa_download, "download_url_to_file"))
    except ImportError:
        pass
    saved = [(module, name, getattr(module, name)) for module, name in patches]
    env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    hf_constants = None
    try:
        for module, name in patches:
            setattr(module, name, refuse)
        os.environ.update({k: "1" for k in env})
        with contextlib.suppress(ImportError):
            import huggingface_hub.constants as hf_constants  # read at import: set the live flag too

            saved_offline, hf_constants.HF_HUB_OFFLINE = hf_constants.HF_HUB_OFFLINE, True
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if hf_constants is not None:
            hf_constants.HF_HUB_OFFLINE = saved_offline


@contextlib.contextmanager
def tensors_only_loads() -> Iterator[None]:
    """torch.load with weights_only=True whatever the caller asks (pyiqa asks for False)."""
    original = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def load_iqa(columns: list[str], device: str | torch.device = "cpu") -> tuple[list[IqaMetric], dict[str, str]]:
    """([metrics that could be built], {column: why not} for the others). Never downloads."""
    unknown = sorted(set(columns) - set(IQA_METRICS))
    if unknown:
        raise ValueError(f"unknown pyiqa metric(s) {unknown}; choose from {sorted(IQA_METRICS)}")
    if not columns:
        return [], {}
    if importlib.util.find_spec("pyiqa") is None:
        return [], {c: f"{IQA_METRICS[c].label} not computed: pip install pyiqa (and its weights)" for c in columns}
    metrics, skipped = [], {}
    for column in columns:
        spec = IQA_METRICS[column]
        missing = missing_files(spec)
        if missing:
            skipped[column] = f"{spec.label} not computed: {', '.join(map(str, missing))} not here (pyiqa downloads it once: python -c \"import pyiqa; pyiqa.create_metric('{spec.pyiqa_name}')\")"
            continue
        try:
            with no_downloads(), tensors_only_loads():
                import pyiqa

                model = pyiqa.create_metric(spec.pyiqa_name, device=torch.device(device))
        except Exception as exc:  # a cache that is incomplete in another way: name it, go on without the column
            skipped[column] = f"{spec.label} not computed: pyiqa could not build it offline ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            continue
        metrics.append(IqaMetric(spec, model, device))
    return metrics, skipped
