"""lafr_core.eval: measure a face restorer (any engine) on HQ faces or LQ/HQ pairs.

    from lafr_core.eval import EvalSet, evaluate, psnr, ssim
    data = EvalSet.from_folders("hq/", preset="celeba-test", seed=0)
    result = evaluate(data, restore=my_restore, identity=load_identity_model("dlib"))

Metrics (metrics.py: PSNR, SSIM, landmark distance; learned.py: LPIPS and FID when their weights
are here; lafr_core.identity: identity distance), the runner (runner.py), the CSV / table /
contact sheet (report.py) and the `lafr eval` command (cli.py: add_eval_parser, run_eval).
"""

from .data import EvalDataError, EvalFace, EvalSet
from .metrics import frechet_distance, landmark_distance, landmarks_of, psnr, quantise, ssim
from .runner import EvalOptions, EvalResult, evaluate

__all__ = [
    "EvalSet", "EvalFace", "EvalDataError", "EvalOptions", "EvalResult", "evaluate",
    "psnr", "ssim", "quantise", "landmarks_of", "landmark_distance", "frechet_distance",
]
