"""The protocol's decision rules (docs/protocol.md, version 2), as pure functions on numpy arrays.

At a pixel, ``m`` is the largest score over the image's label set (float32, clamped to [0, 1]) and
``k`` its class (the lowest class index wins a tie). Under a threshold ``t`` (a float32 value) the
pixel is foreground ``k`` where ``m > t`` **strictly**, background elsewhere: the rule of every
official code base (IRN and EDAM pad a constant background plane and take the argmax, so a tie goes
to the background; MoRe sets ``cam <= t`` to background).

- The sweep's thresholds are ``t_j = float32(j / T)``, j = 0..T-1.
- A method's native rule is a :class:`NativeRule`: a constant (IRN 0.15, EDAM 0.5, MoRe 0.5) or
  GETAM's power rule, foreground where ``m > (1 - m) ** alpha`` in float32 (its background plane
  ``(1 - max) ** alpha`` and an argmax with ties to the background). The power rule is monotone in
  ``m``, so it equals a constant float32 threshold ``t*``, found here exactly by evaluating the
  rule itself (numpy float32, as GETAM's code does) on every float32 value near the root.

Nothing here imports torch: the CPU evaluation path runs on numpy alone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsss_bench.errors import WsssBenchError

#: Largest number of sweep thresholds accepted (the evaluator's state is O(C^2 T)).
MAX_THRESHOLDS = 10_000
RULES = ("constant", "power")
MAX_POWER = 1000.0


def grid_thresholds(num_thresholds: int) -> np.ndarray:
    """float32 ``[T]``: t_j = float32(j / T), the division done in float64 as Python's ``j / T``."""
    T = check_num_thresholds(num_thresholds)
    return (np.arange(T, dtype=np.float64) / T).astype(np.float32)


def check_num_thresholds(num_thresholds: Any) -> int:
    if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, (int, np.integer)):
        raise WsssBenchError(f"the number of thresholds must be an integer, got {num_thresholds!r}")
    T = int(num_thresholds)
    if not 1 <= T <= MAX_THRESHOLDS:
        raise WsssBenchError(f"the number of thresholds must be in 1..{MAX_THRESHOLDS}, got {T}")
    return T


def check_threshold(t: Any, what: str = "threshold") -> float:
    """A finite float in [0, 1] (a threshold compared strictly, in float32)."""
    try:
        v = float(t)
    except (TypeError, ValueError):
        raise WsssBenchError(f"{what} must be a number in [0, 1], got {t!r}") from None
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise WsssBenchError(f"{what} must be a number in [0, 1], got {t!r}")
    return v


def check_ignore_band(band: Any) -> tuple[float, float] | None:
    """``(lo, hi)`` with 0 <= lo < hi <= 1, or None. Pixels with lo <= m < hi become 255."""
    if band is None:
        return None
    try:
        lo, hi = band
    except (TypeError, ValueError):
        raise WsssBenchError(f"ignore band must be two numbers lo,hi, got {band!r}") from None
    lo = check_threshold(lo, "ignore band lower bound")
    hi = check_threshold(hi, "ignore band upper bound")
    if not lo < hi:
        raise WsssBenchError(f"ignore band needs lo < hi, got {lo},{hi}")
    return lo, hi


@functools.lru_cache(maxsize=64)
def power_rule_threshold(alpha: float) -> np.float32:
    """The float32 ``t*`` with ``m > (1 - m) ** alpha``  <=>  ``m > t*`` for every float32 m in [0, 1].

    The rule is evaluated as GETAM writes it (``np.power(1 - m, alpha)`` on float32 arrays) on
    every float32 value within 2^16 ulps of the real root; outside that window the two sides
    differ by far more than float32 rounding. Raises if the evaluated rule is not a step there.
    """
    a = float(alpha)
    if not (math.isfinite(a) and 0.0 < a <= MAX_POWER):
        raise WsssBenchError(f"power rule exponent must be in (0, {MAX_POWER:g}], got {alpha!r}")
    lo, hi = 0.0, 1.0  # g(t) = t - (1 - t)^a is increasing, g(0) = -1, g(1) = 1
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid - (1.0 - mid) ** a > 0.0:
            hi = mid
        else:
            lo = mid
    root = np.float32(lo)
    half = 1 << 16
    bits = np.int64(root.view(np.int32)) + np.arange(-half, half + 1, dtype=np.int64)
    bits = bits[(bits >= 0) & (bits <= np.float32(1.0).view(np.int32))]
    vals = bits.astype(np.int32).view(np.float32)
    fg = vals > np.power(np.float32(1) - vals, a)
    if fg[0] or not fg[-1] or np.any(np.diff(fg.view(np.int8)) < 0):
        raise WsssBenchError(f"the power rule with exponent {a:g} is not a single step in float32 near its root")
    return np.float32(vals[np.argmax(fg) - 1])


@dataclass(frozen=True)
class NativeRule:
    """A method's own background rule: ``("constant", t)`` or ``("power", alpha)``."""

    rule: str
    value: float

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise WsssBenchError(f"native rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if self.rule == "constant":
            object.__setattr__(self, "value", check_threshold(self.value, "native threshold"))
        else:
            power_rule_threshold(float(self.value))  # validates
            object.__setattr__(self, "value", float(self.value))

    @classmethod
    def parse(cls, spec: Any) -> NativeRule | None:
        """None, a NativeRule, a number (a constant threshold), a ``(rule, value)`` pair, a dict
        ``{"rule", "value"}``, or a string ``"constant:0.15"`` / ``"power:32"``."""
        if spec is None or isinstance(spec, NativeRule):
            return spec
        if isinstance(spec, dict):
            return cls(str(spec.get("rule")), spec.get("value"))
        if isinstance(spec, str):
            rule, sep, value = spec.partition(":")
            if not sep:
                return cls("constant", spec)
            try:
                return cls(rule.strip(), float(value))
            except ValueError:
                raise WsssBenchError(f"native rule value must be a number, got {value!r}") from None
        if isinstance(spec, (tuple, list)) and len(spec) == 2:
            return cls(str(spec[0]), spec[1])
        if isinstance(spec, (int, float, np.floating, np.integer)) and not isinstance(spec, bool):
            return cls("constant", float(spec))
        raise WsssBenchError(f"cannot read a native rule from {spec!r}")

    @property
    def threshold32(self) -> np.float32:
        """The float32 constant t with: foreground exactly where m > t."""
        if self.rule == "constant":
            return np.float32(self.value)
        return power_rule_threshold(self.value)

    @property
    def threshold(self) -> float:
        """The equivalent constant threshold as a Python float (the float32 value, exactly)."""
        return self.value if self.rule == "constant" else float(self.threshold32)

    def foreground(self, m: np.ndarray) -> np.ndarray:
        """The rule evaluated literally on float32 ``m`` (what the official code computes)."""
        m = np.asarray(m, dtype=np.float32)
        if self.rule == "constant":
            return m > np.float32(self.value)
        return m > np.power(np.float32(1) - m, self.value)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "value": self.value, "threshold": self.threshold}


# ----------------------------------------------------------------------------------------------
# Per-pixel kernels
# ----------------------------------------------------------------------------------------------


class Workspace:
    """Reusable flat buffers for the per-pixel kernels.

    Fresh arrays of a few hundred kilobytes come from ``mmap`` and page-fault on first touch, which
    costs more than the arithmetic itself; the kernels write into these buffers instead (grown on
    demand, never shrunk). One workspace per thread.
    """

    def __init__(self) -> None:
        self.size = 0
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, n: int, dtype: Any) -> np.ndarray:
        buf = self._bufs.get(name)
        if buf is None or buf.size < n or buf.dtype != np.dtype(dtype):
            buf = np.empty(max(n, 1), dtype=dtype)
            self._bufs[name] = buf
        return buf[:n]


def top_class(maps: Sequence[np.ndarray], labels: Sequence[int],
              ws: Workspace | None = None) -> tuple[np.ndarray, np.ndarray | int]:
    """(m, k): the per-pixel maximum over ``maps`` (float32, same shape) and the value of ``labels``
    of the first maximal map (so with maps in ascending class order the lowest class wins a tie).

    ``k`` is an int when there is one map, and ``m`` is then that map itself (not a copy). With a
    workspace the results are its buffers (flat), valid until the next call.
    """
    if not len(maps):
        raise ValueError("top_class needs at least one map")
    if len(maps) == 1:
        return maps[0], int(labels[0])
    shape = maps[0].shape
    flat = [np.ravel(mp) for mp in maps]
    n = flat[0].size
    ws = ws or Workspace()
    dt = np.int32 if max(abs(int(v)) for v in labels) < 2**31 else np.int64
    better = ws.get("better", n, np.bool_)
    m = ws.get("m", n, np.float32)
    k = ws.get("k", n, dt)
    np.greater(flat[1], flat[0], out=better)
    np.maximum(flat[0], flat[1], out=m)
    np.multiply(better, dt(int(labels[1]) - int(labels[0])), out=k)
    k += dt(int(labels[0]))
    tmp = ws.get("k_tmp", n, dt) if len(flat) > 2 else None
    for i in range(2, len(flat)):
        np.greater(flat[i], m, out=better)
        np.maximum(m, flat[i], out=m)
        # k += better * (label_i - k): arithmetic, several times faster than a masked copy
        np.subtract(dt(int(labels[i])), k, out=tmp)
        np.multiply(tmp, better, out=tmp)
        k += tmp
    return m.reshape(shape), k.reshape(shape)


class ThresholdBins:
    """Counts, per pixel, how many of a sorted set of float32 thresholds lie strictly below m.

    The set is the T grid thresholds plus, when given and not on the grid, the native threshold.
    A pixel is foreground at threshold number ``i`` of the merged, sorted set exactly where its
    count exceeds ``i``; :attr:`grid_pos` and :attr:`native_pos` give those positions. Counts are
    computed in O(1) per pixel (no search): e = floor(float32(m * T)) is the count of grid
    thresholds below m or one less, and one comparison with t_e settles it (see
    :meth:`counts`). ``m`` must already be clamped to [0, 1] and free of NaN.
    """

    def __init__(self, num_thresholds: int, native: np.float32 | float | None = None):
        self.T = T = check_num_thresholds(num_thresholds)
        self.grid = grid_thresholds(T)
        self.native = None if native is None else np.float32(native)
        self.native_extra = self.native is not None and not bool(np.any(self.grid == self.native))
        extra = int(self.native_extra)
        self.num_bins = T + 1 + extra
        if self.native_extra:
            self.grid_pos = np.arange(T) + (self.native <= self.grid).astype(np.int64)
            self.native_pos = int(np.sum(self.grid < self.native))
        else:
            self.grid_pos = np.arange(T)
            self.native_pos = None if self.native is None else int(np.nonzero(self.grid == self.native)[0][0])
        # counts() computes t_e as float32(e) / float32(T); that equals float32(e / T) (computed in
        # float64, then rounded) for every e = 0..T and every T up to MAX_THRESHOLDS (checked
        # here anyway; t_T = 1.0, which no clamped m exceeds)
        e = np.arange(T + 1, dtype=np.float32)
        if not np.array_equal(e / np.float32(T), np.append(self.grid, np.float32(1.0))):
            raise AssertionError(f"float32 division does not reproduce the grid for T = {T}")

    @property
    def positions(self) -> np.ndarray:
        """Positions of the T grid thresholds, then the native one (when there is one)."""
        if self.native is None:
            return self.grid_pos
        return np.append(self.grid_pos, self.native_pos)

    @property
    def merged(self) -> np.ndarray:
        """The sorted merged thresholds (float32)."""
        if not self.native_extra:
            return self.grid
        return np.insert(self.grid, self.native_pos, self.native)

    def counts(self, m: np.ndarray, ws: Workspace | None = None) -> np.ndarray:
        """int32 count of merged thresholds strictly below each m (m float32 in [0, 1]).

        With e = floor(float32(m * T)) (a correctly rounded product, floor exact): every grid
        threshold t_j with j < e is below m and every one with j > e is not, so the count is
        e + (t_e < m), with t_e = float32(e) / float32(T) (see ``__init__``). Checked against a
        search over every float32 in [0, 1] for several T and native thresholds. With a
        workspace the result is its buffer (flat), valid until the next call.
        """
        shape = m.shape
        m = np.ravel(m)
        n = m.size
        ws = ws or Workspace()
        T = np.float32(self.T)
        f = ws.get("bins_f", n, np.float32)
        q = ws.get("bins_q", n, np.float32)
        c = ws.get("bins_c", n, np.bool_)
        b = ws.get("bins_b", n, np.int32)
        np.multiply(m, T, out=f)
        np.floor(f, out=f)
        np.divide(f, T, out=q)
        np.less(q, m, out=c)
        np.copyto(b, f, casting="unsafe")
        b += c
        if self.native_extra:
            np.greater(m, self.native, out=c)
            b += c
        return b.reshape(shape)


def clamp_scores(m: np.ndarray, name: str | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """m clamped to [0, 1] (float32) into ``out`` (a new array when None; may be ``m`` itself);
    NaN is a :class:`WsssBenchError` (infinities clamp)."""
    out = np.clip(m, np.float32(0), np.float32(1), out=out, dtype=np.float32)
    if out.size and math.isnan(float(out.max())):
        raise WsssBenchError("maps contain NaN values", name)
    return out


def pseudo_label(scores: Any, classes: Sequence[int] | np.ndarray, *, index: int | None = None,
                 num_thresholds: int = 100, threshold: float | None = None, rule: Any = None,
                 ignore_band: tuple[float, float] | None = None, ignore_value: int = 255) -> np.ndarray:
    """The protocol's hard pseudo label (uint8 [H, W]) of one image.

    ``scores`` [K, H, W] (numpy or a torch tensor on any device) are the maps of ``classes``
    (1-based class indices, any order); give exactly one of ``index`` (grid threshold j of
    ``num_thresholds``: t = float32(j / T)), ``threshold`` (any float in [0, 1], compared in
    float32) or ``rule`` (a :class:`NativeRule` or its spec). Foreground k where m > t, strictly.
    ``ignore_band=(lo, hi)`` sets ``ignore_value`` where lo <= m < hi (m clamped).
    """
    given = [x is not None for x in (index, threshold, rule)]
    if sum(given) != 1:
        raise ValueError("give exactly one of index, threshold or rule")
    if index is not None:
        T = check_num_thresholds(num_thresholds)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) < T:
            raise WsssBenchError(f"threshold index must be in 0..{T - 1}, got {index!r}")
        t32 = grid_thresholds(T)[int(index)]
    elif threshold is not None:
        t32 = np.float32(check_threshold(threshold))
    else:
        t32 = NativeRule.parse(rule).threshold32
    band = check_ignore_band(ignore_band)
    if hasattr(scores, "detach"):  # a torch tensor
        scores = scores.detach().float().cpu().numpy()
    s = np.asarray(scores, dtype=np.float32)
    cls = np.asarray(classes, dtype=np.int64).reshape(-1)
    if s.ndim == 2 and cls.size == 1:
        s = s[None]
    if s.ndim != 3 or s.shape[0] != cls.size:
        raise WsssBenchError(f"maps of shape {tuple(s.shape)} do not match {cls.size} classes")
    if np.unique(cls).size != cls.size:
        raise WsssBenchError("a class is listed twice in the maps")
    if cls.size and (cls.min() < 1 or cls.max() > 254):
        raise WsssBenchError(f"map classes must be foreground class indices in 1..254, got {cls.tolist()}")
    H, W = s.shape[1:]
    if cls.size == 0:
        return np.zeros((H, W), np.uint8)
    order = np.argsort(cls, kind="stable")
    m, k = top_class([s[i] for i in order], [int(cls[i]) for i in order])
    m = clamp_scores(m)
    label = np.where(m > t32, k, 0).astype(np.uint8)
    if band is not None:
        lo, hi = np.float32(band[0]), np.float32(band[1])
        label[(m >= lo) & (m < hi)] = ignore_value
    return label


def _mapped(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A zeroed array in an anonymous memory map of its own (not in the C heap)."""
    import mmap

    count = math.prod(shape)
    buf = mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize))
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)


class PerImageStore:
    """Per-image ``(classes [n] int16, rows [n, *row_shape])`` packed into two growing arrays.

    Kept one small array pair per image, these long-lived allocations scatter through the C heap
    between the large per-image temporaries (decoded files, maps), so the heap cannot shrink and
    grows with every image (about 120 kB an image measured on VOC-sized masks). Here they are
    copied into arrays that live in memory maps of their own, grown by doubling, so memory follows
    the counts themselves (a few kilobytes an image). ``store[i]`` gives views of image ``i``.
    """

    def __init__(self, row_shape: Sequence[int], dtype: Any):
        self.row_shape = tuple(int(s) for s in row_shape)
        self.dtype = np.dtype(dtype)
        self._cls = _mapped((0,), np.int16)
        self._rows = _mapped((0, *self.row_shape), self.dtype)
        self._starts: list[int] = [0]

    def __len__(self) -> int:
        return len(self._starts) - 1

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self._starts[i], self._starts[i + 1]
        return self._cls[a:b], self._rows[a:b]

    def _reserve(self, n: int) -> None:
        if n <= self._cls.shape[0]:
            return
        cap = max(n, 2 * self._cls.shape[0], 256)
        used = self._starts[-1]
        cls, rows = _mapped((cap,), np.int16), _mapped((cap, *self.row_shape), self.dtype)
        cls[:used], rows[:used] = self._cls[:used], self._rows[:used]
        self._cls, self._rows = cls, rows

    def append(self, classes: np.ndarray, rows: np.ndarray) -> None:
        n = len(classes)
        used = self._starts[-1]
        self._reserve(used + n)
        self._cls[used:used + n] = classes
        self._rows[used:used + n] = rows
        self._starts.append(used + n)

    def extend(self, other: PerImageStore) -> None:
        if (other.row_shape, other.dtype) != (self.row_shape, self.dtype):
            raise ValueError("per-image stores of different shapes")
        used, n = self._starts[-1], other._starts[-1]
        self._reserve(used + n)
        self._cls[used:used + n] = other._cls[:n]
        self._rows[used:used + n] = other._rows[:n]
        self._starts += [used + s for s in other._starts[1:]]

    def to_list(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self[i] for i in range(len(self))]

    @classmethod
    def from_list(cls, items: Sequence[tuple[np.ndarray, np.ndarray]], row_shape: Sequence[int],
                  dtype: Any) -> PerImageStore:
        store = cls(row_shape, dtype)
        store._reserve(sum(len(c) for c, _ in items))
        for c, r in items:
            store.append(c, r)
        return store

    def __getstate__(self) -> dict[str, Any]:
        n = self._starts[-1]
        return {"row_shape": self.row_shape, "dtype": self.dtype.str, "cls": np.array(self._cls[:n]),
                "rows": np.array(self._rows[:n]), "starts": np.asarray(self._starts, dtype=np.int64)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["row_shape"], state["dtype"])
        n = len(state["cls"])
        self._reserve(n)
        self._cls[:n], self._rows[:n] = state["cls"], state["rows"]
        self._starts = [int(s) for s in state["starts"]]
