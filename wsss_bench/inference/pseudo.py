"""Pseudo-label PNGs (``--save-pseudo DIR``): hard labels from the run's maps at a chosen threshold.

Labels follow the protocol's strict rule (foreground where the top score is greater than the
threshold, ties to background), at the best, calibrated or a given threshold, or under the
method's own native rule exactly. Beside the PNGs, ``wsss-bench-pseudo.json`` says where they came
from (the run record's name, method, fingerprint, threshold, mIoU), so ``wsss-bench train-seg``
can name its provenance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss_bench.errors import WsssBenchError
from wsss_bench.inference.cache import read_maps
from wsss_bench.io import atomic_write_json, write_index_png

PSEUDO_MANIFEST = "wsss-bench-pseudo.json"


def label_rule(threshold: str, res: dict[str, Any], native: tuple[str, float]) -> tuple[str, float]:
    """The rule the PNGs use: ``("constant", t)`` or the native ``("power", alpha)``."""
    if threshold == "best":
        return "constant", float(res["best_threshold"])
    if threshold == "native":
        return native
    if threshold == "calibrated":
        t = res["calibrated"]["threshold"]
        if t is None:
            raise WsssBenchError("no calibrated threshold (calibration subset empty); use best, native or a number")
        return "constant", float(t)
    return "constant", float(threshold)


def hard_label(maps: torch.Tensor, classes: np.ndarray, rule: tuple[str, float],
               ignore_band: tuple[float, float] | None = None) -> np.ndarray:
    """uint8 [H, W]: the top class (lowest index on ties) where it is foreground under ``rule``
    (``constant t``: m > float32(t); ``power a``: m > (1 - m) ** a, in float32), background elsewhere;
    with ``ignore_band=(lo, hi)``, 255 where lo <= m < hi."""
    H, W = maps.shape[-2:]
    if maps.shape[0] == 0:
        return np.zeros((H, W), np.uint8)
    cls = torch.as_tensor(np.asarray(classes, dtype=np.int64), device=maps.device)
    order = torch.argsort(cls)
    m, k = maps[order].float().clamp(0, 1).max(dim=0)
    k = cls[order][k]
    kind, value = rule
    if kind == "constant":
        fg = m > torch.tensor(value, dtype=torch.float32, device=m.device)
    elif kind == "power":
        fg = m > (1 - m) ** torch.tensor(value, dtype=torch.float32, device=m.device)
    else:
        raise WsssBenchError(f"unknown background rule {kind!r}")
    label = torch.where(fg, k, torch.zeros_like(k))
    if ignore_band is not None:
        lo, hi = ignore_band
        label = torch.where((m >= lo) & (m < hi), torch.full_like(label, 255), label)
    return label.to(torch.uint8).cpu().numpy()


def write_pseudo_labels(ids: list[str], cams_dir: Path, out_dir: Path, rule: tuple[str, float],
                        ignore_band: tuple[float, float] | None, palette: np.ndarray | None) -> None:
    """VOC-palette PNG pseudo labels, read back from the map cache this run wrote."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        classes, scores = read_maps(cams_dir, image_id)
        label = hard_label(torch.from_numpy(scores.astype(np.float32)), classes, rule, ignore_band)
        write_index_png(out_dir / f"{image_id}.png", label, palette)


def write_pseudo_manifest(out_dir: Path, record: dict[str, Any], rule: tuple[str, float], threshold: str,
                          ignore_band: tuple[float, float] | None) -> None:
    """``wsss-bench-pseudo.json``: the provenance of the PNGs, for ``train-seg``'s record."""
    atomic_write_json(out_dir / PSEUDO_MANIFEST, {
        "format": 1, "record": record.get("name"), "method": record.get("method"),
        "settings": (record.get("settings") or {}).get("name"), "dataset": record["dataset"],
        "split": record["split"], "fingerprint": record["fingerprint"], "num_images": record["num_images"],
        "threshold": {"choice": threshold, "rule": rule[0], "value": rule[1]},
        "ignore_band": None if ignore_band is None else list(ignore_band),
        "miou": record["metrics"]["miou"], "protocol_version": record["protocol_version"],
    })
