"""Optional refinements of pseudo labels: dense CRF and saliency maps.

These are never part of a headline number (docs/protocol.md, docs/methods.md): a run reports them as
separate rows with their own record ``variant``. Numerics are pure functions; only
:func:`load_saliency` touches the disk.

- :func:`dense_crf`: the fully connected CRF of Krähenbühl and Koltun with unary
  ``-log(clip(p, 1e-5))``, a Gaussian and a bilateral kernel, as EDAM's
  ``tool/imutils.py::crf_inference`` runs it (allenwu97/EDAM; same as PSA's). It needs the
  optional package ``pydensecrf2`` (``pip install 'wsss-bench[crf]'``); without it a
  :class:`WsssBenchError` says so.
- :func:`with_background`: EDAM's CRF input, ``concat((1 - max_k s_k) ** alpha, s)``
  (``infer_cls.py::_crf_with_alpha``, alpha 1).
- :func:`apply_saliency`: EDAM's saliency rule (``infer_cls.py`` / ``eval.py`` with ``--sal_path``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsss_bench.errors import WsssBenchError

if TYPE_CHECKING:
    import torch

CRF_PACKAGE = "pydensecrf2"


def _is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch (a tensor exists only once torch
    has been imported, so a module that never saw torch never pays its start-up)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF parameters; defaults are EDAM's (``crf_inference(img, probs, t=3)``).

    Gaussian kernel: ``gaussian_sxy`` 3, ``gaussian_compat`` 3. Bilateral kernel:
    ``bilateral_sxy`` 80, ``bilateral_srgb`` 13, ``bilateral_compat`` 10. ``iterations`` 3 (EDAM
    passes ``t=3``). ``scale_factor`` divides both ``sxy`` (1 in EDAM). ``clip``: probabilities
    below it are raised to it before the log (pydensecrf's ``unary_from_softmax``).
    """

    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0
    iterations: int = 3
    scale_factor: float = 1.0
    clip: float = 1e-5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


EDAM_CRF = CRFParams()


@dataclass(frozen=True)
class SaliencyParams:
    """EDAM's saliency rule parameters (``infer_cls.py --theta --alpha --beta``).

    Defaults are those of the command in EDAM's README that produced its pseudo labels
    (``--theta 0.2 --alpha 0.000001 --beta 0.99999``). Note that ``theta`` is compared with the
    saliency PNG value divided by **100**, not 255, exactly as the official code does.
    """

    theta: float = 0.2
    alpha: float = 1e-6
    beta: float = 0.99999

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


EDAM_SALIENCY = SaliencyParams()


def _as_numpy(x: Any) -> np.ndarray:
    if _is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def with_background(scores: torch.Tensor | np.ndarray, alpha: float = 1.0) -> torch.Tensor | np.ndarray:
    """Prepend EDAM's CRF background row ``(1 - max_k scores_k) ** alpha`` to ``scores`` [K,H,W].

    EDAM ``infer_cls.py::_crf_with_alpha`` (alpha 1). Returns [K+1, H, W] of the input's type.
    """
    if _is_tensor(scores):
        if scores.ndim != 3:
            raise WsssBenchError(f"scores must be [K, H, W], got shape {tuple(scores.shape)}")
        bg = (1 - scores.max(dim=0, keepdim=True).values) ** alpha
        import torch

        return torch.cat([bg, scores], dim=0)
    scores = np.asarray(scores)
    if scores.ndim != 3:
        raise WsssBenchError(f"scores must be [K, H, W], got shape {scores.shape}")
    bg = np.power(1 - scores.max(axis=0, keepdims=True), alpha)
    return np.concatenate([bg, scores], axis=0)


def _import_densecrf() -> Any:
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise WsssBenchError(
            f"dense CRF needs the optional package {CRF_PACKAGE} "
            "(pip install 'wsss-bench[crf]'); it is not installed") from None
    return dcrf


def crf_available() -> bool:
    """Whether the optional dense-CRF package can be imported."""
    try:
        _import_densecrf()
    except WsssBenchError:
        return False
    return True


def dense_crf(image: np.ndarray, probs: torch.Tensor | np.ndarray,
              params: CRFParams = EDAM_CRF) -> torch.Tensor | np.ndarray:
    """Refine per-class probabilities with a fully connected CRF (EDAM's ``crf_inference``).

    ``image``: uint8 [H, W, 3] RGB. ``probs``: [C, H, W] non-negative scores, one row per label
    (background included, e.g. from :func:`with_background`); they are not renormalised, only
    clipped to ``[params.clip, 1]`` before the log, as in pydensecrf's ``unary_from_softmax``.
    Returns the CRF marginals [C, H, W] (float32, rows sum to 1), as a tensor on the input's
    device when ``probs`` is a tensor, else as a NumPy array.
    """
    dcrf = _import_densecrf()
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise WsssBenchError(f"dense CRF needs a uint8 HxWx3 image, got {img.dtype} {img.shape}")
    p = _as_numpy(probs).astype(np.float32, copy=False)
    if p.ndim != 3 or p.shape[1:] != img.shape[:2]:
        raise WsssBenchError(f"dense CRF: probabilities {p.shape} do not match the image {img.shape[:2]}")
    if params.iterations < 0:
        raise WsssBenchError(f"dense CRF: iterations must be >= 0, got {params.iterations}")
    n_labels, h, w = p.shape
    unary = -np.log(np.clip(p, params.clip, 1.0)).reshape(n_labels, -1)
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy / params.scale_factor, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy / params.scale_factor, srgb=params.bilateral_srgb,
                             rgbim=np.ascontiguousarray(img), compat=params.bilateral_compat)
    q = np.array(crf.inference(int(params.iterations)), dtype=np.float32).reshape(n_labels, h, w)
    if _is_tensor(probs):
        import torch

        return torch.from_numpy(q).to(probs.device)
    return q


def apply_saliency(scores: torch.Tensor | np.ndarray, saliency: np.ndarray,
                   params: SaliencyParams = EDAM_SALIENCY,
                   classes: torch.Tensor | np.ndarray | None = None) -> torch.Tensor | np.ndarray:
    """EDAM's saliency rule: hard labels from foreground scores and a saliency map.

    ``scores``: [K, H, W] scores of the image's K foreground classes (max-normalised maps, or the
    foreground rows of :func:`dense_crf`'s output for the CRF + saliency row). ``saliency``:
    [H, W] saliency values as stored in the PNG (0..255). The rule of allenwu97/EDAM
    ``infer_cls.py`` and ``eval.py``:

    - background score = 1 where ``saliency <= theta * 100`` (not salient), else 0;
    - a class score below ``alpha`` becomes -2 (never chosen), above ``beta`` becomes 2;
    - label = argmax over (background, classes), ties to the lower index (background first).

    EDAM takes the argmax over all 21 channels with zeros for absent classes; restricting it to
    the image's classes gives the same labels, since an absent class never beats the background
    (0 or 1) on a tie. Returns int64 [H, W]: 0 for background and ``k + 1`` for ``scores[k]``,
    or, when ``classes`` (the K 1-based class ids) is given, 0 and those ids. Tensor in, tensor out.
    """
    s = _as_numpy(scores).astype(np.float32, copy=False)
    sal = np.asarray(saliency)
    if s.ndim != 3:
        raise WsssBenchError(f"scores must be [K, H, W], got shape {s.shape}")
    if sal.shape != s.shape[1:]:
        raise WsssBenchError(f"saliency map {sal.shape} does not match the scores {s.shape[1:]}")
    bg = (sal.astype(np.float64) <= params.theta * 100).astype(np.float32)[None]
    fg = np.where(s < params.alpha, np.float32(-2), s)
    fg = np.where(fg > params.beta, np.float32(2), fg)
    labels = np.argmax(np.concatenate([bg, fg], axis=0), axis=0).astype(np.int64)
    if classes is not None:
        ids = _as_numpy(classes).astype(np.int64).reshape(-1)
        if ids.shape[0] != s.shape[0]:
            raise WsssBenchError(f"apply_saliency: {ids.shape[0]} class ids for {s.shape[0]} score maps")
        labels = np.concatenate([np.zeros(1, np.int64), ids])[labels]
    if _is_tensor(scores):
        import torch

        return torch.from_numpy(labels).to(scores.device)
    return labels


def load_saliency(directory: str | os.PathLike, image_id: str, shape: tuple[int, int]) -> np.ndarray:
    """Read ``<directory>/<image_id>.png`` as a uint8 [H, W] saliency map (EDAM's layout).

    A colour or palette PNG is converted to grey (PIL ``L``). Raises :class:`WsssBenchError`
    naming the file when it is missing, unreadable or not ``shape`` (H, W).
    """
    from PIL import Image

    path = Path(directory) / f"{image_id}.png"
    if not path.is_file():
        raise WsssBenchError("saliency map not found", path)
    try:
        with Image.open(path) as im:
            if im.mode != "L":
                im = im.convert("L")
            sal = np.array(im)
    except OSError as e:
        raise WsssBenchError(f"cannot read saliency map ({e})", path) from None
    if sal.shape != tuple(shape):
        raise WsssBenchError(f"saliency map is {sal.shape[1]}x{sal.shape[0]}, image is {shape[1]}x{shape[0]}",
                             path)
    return sal
