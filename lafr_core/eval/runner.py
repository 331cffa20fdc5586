"""Run an evaluation: restore each LQ face with any engine, score it against its HQ face.

A restorer is any `restore(crops) -> crops` on FFHQ-aligned faces [N, S, S, 3] float 0..1: a
LafrPipeline (LAFR and converted OSEDiff files), another engine's function, or None to score the
LQ faces themselves. Faces restored beforehand by another tool come in through the EvalSet.

Every image is rounded to 8 bits before scoring, as the protocol scores saved PNGs. Each face is
scored twice, restored vs HQ and LQ vs HQ (`baseline`), so the table shows what restoration
changed. Per-face columns: psnr, ssim, lpips, the pyiqa metrics' (dists, musiq, clipiqa, maniqa),
niqe, lmd_px, the identity model's column (id_dlib or id_arcface_deg); the LQ's have an lq_ prefix. NaN marks a face a metric could not score (no
landmarks found); averages skip NaN and say how many faces they cover.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..identity import IdentityModel
from .data import EvalSet
from .iqa import IqaMetric
from .learned import FidAccumulator, Lpips
from .metrics import landmark_distance, landmarks_of, psnr, quantise, ssim
from .niqe import BLOCK, niqe

Restorer = Callable[[torch.Tensor], torch.Tensor]
LOWER_IS_BETTER = {"lpips", "dists", "niqe", "lmd_px", "id_dlib", "id_arcface_deg", "fid", "fid_ffhq"}
SHEET_THUMB = 160  # contact-sheet thumbnails (px); kept as uint8 while the run goes on


@dataclass
class EvalOptions:
    batch_size: int = 4
    y_channel: bool = False
    baseline: bool = True
    sheet_faces: int = 16  # faces kept for the contact sheet
    landmarks: bool = True  # LMD (runs MTCNN on HQ, restored and LQ faces: the slowest metric on a CPU)
    fid_stats: tuple[np.ndarray, np.ndarray] | None = None  # FID's reference instead of the HQ faces
    fid_ffhq: tuple[np.ndarray, np.ndarray] | None = None  # FID-F: also FID against these (FFHQ) statistics
    niqe: bool = True  # no weights needed; skipped with a note for faces under two 96x96 blocks


@dataclass
class EvalResult:
    rows: list[dict]  # one per face: name + metric columns
    columns: list[str]  # metric columns in display order (restored first, then lq_)
    notes: list[str]  # metrics skipped and why, how identity was measured
    fid: dict[str, float] = field(default_factory=dict)  # "fid", "fid_ffhq" (restored) and "lq_fid", "lq_fid_ffhq"
    thumbs: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)  # name, LQ, restored, HQ
    seconds_restore: float = 0.0
    seconds_metrics: float = 0.0

    def mean(self, column: str) -> tuple[float, int]:
        """(mean over the faces that have a value, how many faces that is)."""
        values = np.array([row[column] for row in self.rows], dtype=np.float64)
        scored = values[~np.isnan(values)]
        return (float(scored.mean()) if len(scored) else math.nan), int(len(scored))


def _thumb(image: torch.Tensor) -> np.ndarray:
    import cv2

    array = (image.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    return cv2.resize(array, (SHEET_THUMB, SHEET_THUMB), interpolation=cv2.INTER_AREA)


def _progress(total: int):
    """tqdm when installed (the pipeline extra has it), else a silent stand-in."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="face", desc="eval", dynamic_ncols=True)
    except ImportError:

        class Quiet:
            def update(self, n: int) -> None: ...
            def close(self) -> None: ...

        return Quiet()


def score(
    output: torch.Tensor,
    hq: torch.Tensor,
    hq_landmarks: torch.Tensor | None,
    identity: IdentityModel | None,
    lpips: Lpips | None,
    y_channel: bool,
    iqa: list[IqaMetric] = (),
    with_niqe: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-face metric columns of `output` vs `hq` (both 8-bit-rounded [B, S, S, 3])."""
    out = {"psnr": psnr(output, hq, y_channel), "ssim": ssim(output, hq, y_channel)}
    if lpips is not None:
        out["lpips"] = lpips(output, hq)
    for metric in iqa:
        out[metric.spec.column] = metric(output, hq)
    if with_niqe:
        out["niqe"] = niqe(output)
    if hq_landmarks is not None:
        out["lmd_px"] = landmark_distance(landmarks_of(output), hq_landmarks)
    if identity is not None:
        out[identity.column] = identity.distances(output, hq).double()
    return out


def evaluate(
    data: EvalSet,
    restore: Restorer | None = None,
    identity: IdentityModel | None = None,
    lpips: Lpips | None = None,
    fid: FidAccumulator | None = None,
    options: EvalOptions = EvalOptions(),
    notes: list[str] | None = None,
    progress: bool = True,
    iqa: list[IqaMetric] | None = None,
) -> EvalResult:
    """Score every face of `data`; the result holds rows, averages and contact-sheet thumbnails."""
    notes = list(notes or [])
    iqa = list(iqa or [])
    with_niqe = options.niqe and (data.size // BLOCK) ** 2 >= 2
    if options.niqe and not with_niqe:
        notes.append(f"NIQE not computed: {data.size}x{data.size} faces hold fewer than two {BLOCK}x{BLOCK} blocks")
    elif with_niqe:
        notes.append("NIQE: BasicSR's calculate_niqe (Y channel, crop 0), lafr_core.eval.niqe")
    if identity is not None:
        notes.append(f"identity: {identity.name}: {identity.unit}")
    if options.landmarks:
        notes.append("LMD: bundled MTCNN, 5 points, mean distance in crop pixels")
    lq_fid = FidAccumulator(fid.features) if fid is not None and options.baseline else None
    rows: list[dict] = []
    result = EvalResult(rows, [], notes)
    bar = _progress(len(data)) if progress else None
    for start in range(0, len(data), options.batch_size):
        faces = [data.face(i) for i in range(start, min(start + options.batch_size, len(data)))]
        lq = quantise(torch.stack([f.lq for f in faces]))
        hq = quantise(torch.stack([f.hq for f in faces]))
        t0 = time.perf_counter()
        if faces[0].restored is not None:
            restored = torch.stack([f.restored for f in faces])
        elif restore is not None:
            restored = restore(lq).float().cpu()
            if restored.shape != lq.shape:
                raise ValueError(f"the restorer returned {tuple(restored.shape)} for faces {tuple(lq.shape)}")
        else:
            restored = lq
        restored = quantise(restored)
        t1 = time.perf_counter()
        hq_landmarks = landmarks_of(hq) if options.landmarks else None
        columns = score(restored, hq, hq_landmarks, identity, lpips, options.y_channel, iqa, with_niqe)
        if options.baseline:
            same = restore is None and faces[0].restored is None  # nothing restored: the LQ's scores are the same
            base = columns if same else score(lq, hq, hq_landmarks, identity, lpips, options.y_channel, iqa, with_niqe)
            columns.update({f"lq_{k}": v for k, v in base.items()})
        if fid is not None:
            fid.add(restored, hq if options.fid_stats is None else None)
            if lq_fid is not None:
                lq_fid.add(lq, None)
        result.seconds_restore += t1 - t0
        result.seconds_metrics += time.perf_counter() - t1
        result.columns = list(columns)
        for j, face in enumerate(faces):
            rows.append({"name": face.name, **{k: float(v[j]) for k, v in columns.items()}})
            if len(result.thumbs) < options.sheet_faces:
                result.thumbs.append((face.name, _thumb(lq[j]), _thumb(restored[j]), _thumb(hq[j])))
        if bar is not None:
            bar.update(len(faces))
    if bar is not None:
        bar.close()
    if fid is not None and len(rows) >= 2:
        result.fid["fid"] = fid.fid(options.fid_stats)
        if options.fid_ffhq is not None:
            result.fid["fid_ffhq"] = fid.fid(options.fid_ffhq)
        if lq_fid is not None:
            lq_fid.reference = fid.reference
            result.fid["lq_fid"] = lq_fid.fid(options.fid_stats)
            if options.fid_ffhq is not None:
                result.fid["lq_fid_ffhq"] = lq_fid.fid(options.fid_ffhq)
    elif fid is not None:
        notes.append("FID skipped: it needs at least 2 faces")
    return result
