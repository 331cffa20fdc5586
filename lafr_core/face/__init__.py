"""lafr_core.face: find faces, align them to the FFHQ template, paste restored faces back.

    from lafr_core.face import detect_faces, align_faces, paste_faces, FaceSet
    faces = detect_faces(images)                 # images [B, H, W, C] float 0..1, C in 1, 3, 4
    crops, faces = align_faces(images, faces)    # crops [N, 512, 512, 3]
    out = paste_faces(images, restored, faces)   # same shape, dtype and channels as images

Host-free and light: torch, numpy and safetensors only (facexlib optionally, for RetinaFace);
never diffusers or peft, which the ComfyUI / A1111 node path does not have.
"""

from .align import DEFAULT_CROP_SIZE, FFHQ_TEMPLATE_512, align_faces, estimate_similarity, ffhq_template, invert_affine
from .colour import COLOUR_CORRECTIONS, FILE_COLOUR_FIX, colour_for, correct_colour
from .detect import DEFAULT_MIN_SIZE, DEFAULT_THRESHOLDS, DETECTORS, detect_faces, detector_status, parse_select, resolve_detector, select_faces
from .errors import DetectorUnavailableError, DetectorWeightsError, FaceError
from .faceset import LANDMARK_NAMES, FaceSet
from .mask import DEFAULT_FEATHER, crop_masks
from .paste import MASKS, paste_faces

__all__ = [
    "detect_faces",
    "align_faces",
    "paste_faces",
    "FaceSet",
    "LANDMARK_NAMES",
    "DETECTORS",
    "DEFAULT_THRESHOLDS",
    "DEFAULT_MIN_SIZE",
    "DEFAULT_CROP_SIZE",
    "DEFAULT_FEATHER",
    "COLOUR_CORRECTIONS",
    "FILE_COLOUR_FIX",
    "colour_for",
    "MASKS",
    "FFHQ_TEMPLATE_512",
    "ffhq_template",
    "estimate_similarity",
    "invert_affine",
    "correct_colour",
    "crop_masks",
    "detector_status",
    "resolve_detector",
    "select_faces",
    "parse_select",
    "FaceError",
    "DetectorWeightsError",
    "DetectorUnavailableError",
]
