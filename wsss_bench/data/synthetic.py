"""The embedded synthetic dataset: coloured shapes on textured, noisy backgrounds, in VOC layout.

What the demo and the tests run on, since no real dataset can be downloaded here. The class of an
object is its *shape* (circle, square, triangle, star, ring); its colour is drawn independently of
the class, so colour alone does not give the class. Each image has 1-3 objects of varied size,
rotation and colour, some overlapping (later objects occlude earlier ones, each stays at least
partly visible), on a background made of a colour gradient, stripes, blotches, distractor lines
and pixel noise. Masks are palette PNGs with a thin 255 ignore band on object borders, as VOC has.

Generation is deterministic: image ``i`` depends only on ``(seed, i)`` and the size range, and the
same arguments give byte-identical files. Layout written::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png
    ImageSets/Segmentation/{train,val}.txt
    shapes.json               the drawn objects (class, geometry, colour) per image
    wsss_synthetic.json       manifest of the generator parameters (written last)
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsss_bench.data.classes import SYNTHETIC, ClassSet
from wsss_bench.data.layout import require_dir
from wsss_bench.data.voc import VOCSegmentation
from wsss_bench.errors import WsssBenchError

GENERATOR = "wsss-bench synthetic"
GENERATOR_VERSION = 1
MANIFEST_NAME = "wsss_synthetic.json"
SHAPES_NAME = "shapes.json"
SHAPE_KINDS = SYNTHETIC.names[1:]  # circle, square, triangle, star, ring
RING_INNER = 0.5


@dataclass(frozen=True)
class ShapeSpec:
    """One drawn object: class index (1-based), centre, size and the geometry used to draw it."""

    cls: int
    cx: float
    cy: float
    r: float
    angle: float
    colour: tuple[int, int, int]

    @property
    def kind(self) -> str:
        return SYNTHETIC.names[self.cls]

    def vertices(self) -> list[tuple[float, float]] | None:
        """Polygon vertices (pixel coordinates) for square, triangle and star; ``None`` otherwise."""
        a, r = self.angle, self.r
        if self.kind == "square":
            rad = [r * 1.13] * 4
            ang = [a + math.pi / 4 + k * math.pi / 2 for k in range(4)]
        elif self.kind == "triangle":
            rad = [r * 1.25] * 3
            ang = [a + k * 2 * math.pi / 3 for k in range(3)]
        elif self.kind == "star":
            rad = [r * 1.2 if k % 2 == 0 else r * 1.2 * 0.45 for k in range(10)]
            ang = [a + k * math.pi / 5 for k in range(10)]
        else:
            return None
        return [(self.cx + q * math.cos(t), self.cy + q * math.sin(t)) for q, t in zip(rad, ang, strict=True)]

    def to_json(self) -> dict:
        d = {"class": self.cls, "kind": self.kind, "cx": self.cx, "cy": self.cy, "r": self.r,
             "angle": self.angle, "colour": list(self.colour)}
        if self.kind == "ring":
            d["r_inner"] = self.r * RING_INNER
        v = self.vertices()
        if v is not None:
            d["vertices"] = [[x, y] for x, y in v]
        return d


# ----------------------------------------------------------------------------------------------
# Rasterisation (pure numpy, pixel centres at (x + 0.5, y + 0.5))
# ----------------------------------------------------------------------------------------------


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    return xs + 0.5, ys + 0.5


def polygon_mask(vertices: list[tuple[float, float]], h: int, w: int) -> np.ndarray:
    """Even-odd (crossing-number) point-in-polygon test at every pixel centre."""
    xs, ys = _grid(h, w)
    inside = np.zeros((h, w), dtype=bool)
    n = len(vertices)
    for i in range(n):
        x1, y1 = vertices[i]
        x2, y2 = vertices[(i + 1) % n]
        if y1 == y2:
            continue
        straddles = (y1 > ys) != (y2 > ys)
        x_cross = x1 + (ys - y1) * (x2 - x1) / (y2 - y1)
        inside ^= straddles & (xs < x_cross)
    return inside


def shape_mask(spec: ShapeSpec, h: int, w: int) -> np.ndarray:
    """Boolean HxW mask of one object."""
    verts = spec.vertices()
    if verts is not None:
        return polygon_mask(verts, h, w)
    xs, ys = _grid(h, w)
    d2 = (xs - spec.cx) ** 2 + (ys - spec.cy) ** 2
    m = d2 <= spec.r ** 2
    if spec.kind == "ring":
        m &= d2 >= (spec.r * RING_INNER) ** 2
    return m


def border_band(label: np.ndarray, ignore: int = 255) -> np.ndarray:
    """Label map with every pixel whose 4-neighbourhood holds another label set to ``ignore``."""
    diff = np.zeros(label.shape, dtype=bool)
    diff[1:, :] |= label[1:, :] != label[:-1, :]
    diff[:-1, :] |= label[:-1, :] != label[1:, :]
    diff[:, 1:] |= label[:, 1:] != label[:, :-1]
    diff[:, :-1] |= label[:, :-1] != label[:, 1:]
    out = label.copy()
    out[diff] = ignore
    return out


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid, bilinearly upsampled."""
    g = rng.uniform(-1, 1, size=(cells + 1, cells + 1))
    yi = np.linspace(0, cells, h)
    xi = np.linspace(0, cells, w)
    y0 = np.minimum(yi.astype(int), cells - 1)
    x0 = np.minimum(xi.astype(int), cells - 1)
    fy = (yi - y0)[:, None]
    fx = (xi - x0)[None, :]
    a = g[y0][:, x0]
    b = g[y0][:, x0 + 1]
    c = g[y0 + 1][:, x0]
    d = g[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    xs, ys = _grid(h, w)
    c1 = rng.uniform(30, 225, 3)
    c2 = rng.uniform(30, 225, 3)
    phi = rng.uniform(0, 2 * math.pi)
    t = (xs * math.cos(phi) + ys * math.sin(phi))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
    # stripes of random period, orientation and strength (texture, not a class cue)
    psi = rng.uniform(0, math.pi)
    period = rng.uniform(5, 18)
    amp = rng.uniform(6, 30)
    stripes = np.sin(2 * math.pi * (xs * math.cos(psi) + ys * math.sin(psi)) / period + rng.uniform(0, 6.3))
    img += amp * stripes[..., None] * rng.uniform(0.5, 1.0, 3)[None, None, :]
    img += 35 * _smooth_noise(rng, h, w, int(rng.integers(3, 7)))[..., None] * rng.uniform(0.3, 1, 3)
    # distractor line segments (background, not objects)
    for _ in range(int(rng.integers(0, 3))):
        x1, x2 = rng.uniform(0, w, 2)
        y1, y2 = rng.uniform(0, h, 2)
        dx, dy = x2 - x1, y2 - y1
        length2 = max(dx * dx + dy * dy, 1e-6)
        u = np.clip(((xs - x1) * dx + (ys - y1) * dy) / length2, 0, 1)
        dist = np.hypot(xs - (x1 + u * dx), ys - (y1 + u * dy))
        line = dist <= rng.uniform(0.6, 1.6)
        img[line] = rng.uniform(0, 255, 3)
    return img


def _object_colour(rng: np.random.Generator, avoid: np.ndarray) -> tuple[int, int, int]:
    """A random colour at least a little away from the background mean (drawn independently of class)."""
    col = rng.uniform(0, 255, 3)
    for _ in range(20):
        if np.abs(col - avoid).sum() >= 90:
            break
        col = rng.uniform(0, 255, 3)
    return (int(col[0]), int(col[1]), int(col[2]))


def _layout(rng: np.random.Generator, h: int, w: int, bg_mean: np.ndarray) -> tuple[list[ShapeSpec], np.ndarray]:
    """Objects and the label map (before the ignore band); each object stays >= 35% visible."""
    side = min(h, w)
    for _attempt in range(60):
        n = int(rng.integers(1, 4))
        specs = []
        for _ in range(n):
            cls = int(rng.integers(1, len(SHAPE_KINDS) + 1))
            r = float(rng.uniform(0.14, 0.28) * side)
            cx = float(rng.uniform(0.7 * r, w - 0.7 * r))
            cy = float(rng.uniform(0.7 * r, h - 0.7 * r))
            specs.append(ShapeSpec(cls, round(cx, 3), round(cy, 3), round(r, 3),
                                   round(float(rng.uniform(0, 2 * math.pi)), 4), _object_colour(rng, bg_mean)))
        label = np.zeros((h, w), dtype=np.uint8)
        owner = np.full((h, w), -1, dtype=np.int16)
        full = []
        for k, s in enumerate(specs):
            m = shape_mask(s, h, w)
            full.append(int(m.sum()))
            label[m] = s.cls
            owner[m] = k
        visible = [int((owner == k).sum()) for k in range(n)]
        if all(f >= 60 and v >= 0.35 * f for f, v in zip(full, visible, strict=True)):
            return specs, label
    raise RuntimeError("could not place visible shapes")  # pragma: no cover - 60 tries always suffice


def render_image(seed: int, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list[ShapeSpec]]:
    """Image ``index`` of the set with ``seed``: (RGB uint8 HxWx3, mask uint8 HxW with 255 band, objects)."""
    rng = np.random.default_rng([int(seed), int(index), GENERATOR_VERSION])
    lo, hi = size
    h = int(rng.integers(lo, hi + 1))
    w = int(rng.integers(lo, hi + 1))
    img = _background(rng, h, w)
    specs, label = _layout(rng, h, w, img.reshape(-1, 3).mean(axis=0))
    xs, ys = _grid(h, w)
    for s in specs:
        m = shape_mask(s, h, w)
        phi = rng.uniform(0, 2 * math.pi)
        shade = 22 * ((xs - s.cx) * math.cos(phi) + (ys - s.cy) * math.sin(phi)) / max(s.r, 1.0)
        col = np.asarray(s.colour, dtype=np.float64)[None, None, :] + shade[..., None]
        img[m] = col[m]
    img += rng.normal(0, 7, size=img.shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return image, border_band(label), specs


# ----------------------------------------------------------------------------------------------
# Writing the dataset
# ----------------------------------------------------------------------------------------------


def _size_range(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``(lo, hi)`` side range; an int N means sides drawn in ``[round(0.75 N), N]``."""
    if isinstance(size, int):
        lo, hi = round(0.75 * size), size
    else:
        lo, hi = (int(v) for v in size)
    if not 32 <= lo <= hi <= 4096:
        raise WsssBenchError(f"image side range must satisfy 32 <= min <= max <= 4096, got {lo}..{hi}")
    return lo, hi


def image_id(index: int) -> str:
    return f"synth_{index:05d}"


def _manifest(num_images: int, seed: int, size: tuple[int, int], val_every: int, quality: int) -> dict:
    return {"generator": GENERATOR, "version": GENERATOR_VERSION, "num_images": int(num_images),
            "seed": int(seed), "size": [int(size[0]), int(size[1])], "val_every": int(val_every),
            "jpeg_quality": int(quality), "classes": list(SYNTHETIC.names)}


def _png_bytes(mask: np.ndarray, palette: np.ndarray) -> bytes:
    from PIL import Image

    im = Image.fromarray(mask, mode="L").convert("P")
    im.putpalette(palette.reshape(-1).tolist())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(image: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _is_ours(folder: Path) -> bool:
    return (folder / MANIFEST_NAME).is_file()


def generate(out_dir: str | os.PathLike, num_images: int = 200, seed: int = 0,
             size: int | tuple[int, int] = (96, 128), val_every: int = 4, jpeg_quality: int = 90) -> Path:
    """Write the synthetic set in VOC layout to ``out_dir`` and return it.

    Every ``val_every``-th image (index ``val_every - 1``, ``2 * val_every - 1``, ...) is in
    ``val``, the rest in ``train``. The set is built in a temporary sibling folder and renamed into
    place, so an interrupted run leaves no half-written dataset. A folder that exists and was not
    made by this generator is refused rather than overwritten.
    """
    out = Path(out_dir)
    if val_every < 2:
        raise WsssBenchError(f"val_every must be >= 2, got {val_every}")
    if num_images < val_every:
        raise WsssBenchError(f"need at least {val_every} images so that val is not empty, got {num_images}")
    if not 1 <= jpeg_quality <= 100:
        raise WsssBenchError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    lo_hi = _size_range(size)
    if out.exists() and not (out.is_dir() and (_is_ours(out) or not any(out.iterdir()))):
        raise WsssBenchError("exists and is not a synthetic dataset made by wsss-bench; refusing to overwrite", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (tmp / sub).mkdir(parents=True)
        palette = SYNTHETIC.palette
        shapes: dict[str, list[dict]] = {}
        train, val = [], []
        for i in range(num_images):
            iid = image_id(i)
            image, mask, specs = render_image(seed, i, lo_hi)
            (tmp / "JPEGImages" / f"{iid}.jpg").write_bytes(_jpeg_bytes(image, jpeg_quality))
            (tmp / "SegmentationClass" / f"{iid}.png").write_bytes(_png_bytes(mask, palette))
            shapes[iid] = [s.to_json() for s in specs]
            (val if (i + 1) % val_every == 0 else train).append(iid)
        (tmp / "ImageSets/Segmentation/train.txt").write_text("".join(f"{i}\n" for i in train))
        (tmp / "ImageSets/Segmentation/val.txt").write_text("".join(f"{i}\n" for i in val))
        (tmp / SHAPES_NAME).write_text(json.dumps(shapes, indent=1) + "\n")
        man = _manifest(num_images, seed, lo_hi, val_every, jpeg_quality)
        man["splits"] = {"train": len(train), "val": len(val)}
        (tmp / MANIFEST_NAME).write_text(json.dumps(man, indent=2) + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_synthetic_manifest(root: str | os.PathLike) -> dict | None:
    p = Path(root) / MANIFEST_NAME
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def ensure_synthetic(out_dir: str | os.PathLike, num_images: int = 200, seed: int = 0,
                     size: int | tuple[int, int] = (96, 128)) -> Path:
    """Generate the set unless ``out_dir`` already holds one made with these exact parameters."""
    out = Path(out_dir)
    lo_hi = _size_range(size)
    man = read_synthetic_manifest(out)
    if man is not None:
        want = _manifest(num_images, seed, lo_hi, 4, 90)
        if all(man.get(k) == v for k, v in want.items()):
            return out
    return generate(out, num_images=num_images, seed=seed, size=lo_hi)


class SyntheticShapes(VOCSegmentation):
    """The synthetic shapes set (``train``/``val``), read from its VOC layout with ``SYNTHETIC`` classes."""

    name = "synthetic"
    splits = ("train", "val")
    allow_xml = False

    def __init__(self, root: str | os.PathLike, split: str, labels: str = "mask",
                 classes: ClassSet = SYNTHETIC, _on_bad=None):
        super().__init__(root, split, labels=labels, classes=classes, _on_bad=_on_bad)

    def _resolve_root(self, root: str | os.PathLike) -> Path:
        root = Path(root)
        require_dir(root, "data root")
        if not (root / "JPEGImages").is_dir():
            raise WsssBenchError("not a synthetic dataset root: JPEGImages/ not found (create one with "
                                 "`wsss-bench datasets synth --out DIR`)", root)
        return root

    def describe(self) -> dict:
        d = super().describe()
        man = read_synthetic_manifest(self.root)
        if man is not None:
            d["generator"] = {k: man.get(k) for k in ("version", "num_images", "seed", "size")}
        return d
