"""Label spaces of the protocol: class names, palette, background index 0, ignore index 255."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wsss_bench.errors import WsssBenchError

BACKGROUND = 0
IGNORE_INDEX = 255


def voc_palette(n: int = 256) -> np.ndarray:
    """The standard PASCAL VOC colour map (bit-interleaved), uint8 [n, 3]."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


@dataclass(frozen=True)
class ClassSet:
    """A label space. ``names[0]`` is the background; index 255 is ignored in ground truth."""

    name: str
    names: tuple[str, ...]
    palette: np.ndarray = field(default_factory=voc_palette, compare=False, repr=False)
    background: int = BACKGROUND
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        """All classes, background included (VOC 21, COCO 81)."""
        return len(self.names)

    @property
    def num_foreground(self) -> int:
        return len(self.names) - 1

    @property
    def foreground_names(self) -> tuple[str, ...]:
        return self.names[1:]

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise WsssBenchError(f"unknown class {name!r} for {self.name}") from None


VOC_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

# The 80 COCO categories in ascending category-id order (ids 1..90 with gaps); contiguous 1..80.
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)
COCO_NAMES = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
assert len(COCO_NAMES) == 81 and len(COCO_CATEGORY_IDS) == 80

SYNTHETIC_NAMES = ("background", "circle", "square", "triangle", "star", "ring")

VOC = ClassSet("voc", VOC_NAMES)
COCO = ClassSet("coco", COCO_NAMES)
SYNTHETIC = ClassSet("synthetic", SYNTHETIC_NAMES)


def coco_category_to_index() -> dict[int, int]:
    """Raw COCO category id -> contiguous class index 1..80."""
    return {cid: i + 1 for i, cid in enumerate(COCO_CATEGORY_IDS)}


def get_classset(spec: str) -> ClassSet:
    """``voc``, ``coco``, ``synthetic`` or an integer N (N classes, background included)."""
    key = str(spec).lower()
    if key == "voc":
        return VOC
    if key == "coco":
        return COCO
    if key == "synthetic":
        return SYNTHETIC
    try:
        n = int(key)
    except ValueError:
        raise WsssBenchError(f"unknown class set {spec!r} (expected voc, coco, synthetic or a count)") from None
    if not 2 <= n <= 255:
        raise WsssBenchError(f"class count must be in 2..255 (background included), got {n}")
    return ClassSet(f"custom{n}", ("background",) + tuple(f"class{i}" for i in range(1, n)))
