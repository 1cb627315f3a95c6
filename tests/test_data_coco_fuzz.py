"""Fuzzing the COCO instances reader and mask builder against pycocotools.

A valid small instances JSON (the ``coco_tree`` fixture's: polygons, multi-part polygons,
uncompressed and compressed RLE, crowd, raw category ids with gaps, an image without annotations)
is mutated by hypothesis: values anywhere in the tree replaced by hostile ones (NaN, inf, huge or
negative numbers, strings, lists, null, booleans), keys deleted, list items duplicated, removed or
appended, and the serialised text truncated or its bytes changed. Every input must either

* build masks identical, pixel for pixel, to a reference computed with pycocotools' own
  ``COCO.annToMask`` (the smallest covering non-crowd instance by ``area`` then id gives the class,
  crowd pixels nobody covers become 255), or
* raise :class:`WsssBenchError` whose one-line message names the JSON file,

and never anything else: no other exception, no crash, no hang, no huge allocation. pycocotools is C
code that trusts its input (a NaN coordinate or an RLE whose counts overrun the image is a
segmentation fault), so the cases run in a child process with an address-space limit of 1 GiB above
what the imports take and a wall-clock limit; a crash, a ``MemoryError`` or a timeout fails the test.
The compressed-RLE decoder (:func:`wsss_bench.data.coco.rle_string_counts`) is fuzzed the same way
against pycocotools' ``rleFrString``: strings it accepts decode to the same mask.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CHILD_TIMEOUT_S = 900
CASE_SECONDS = 20
HEADROOM_BYTES = 1 << 30


def run_child(which: str, examples: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(Path(__file__).resolve()), which, str(examples)], env=env,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)


def _outcome(proc: subprocess.CompletedProcess) -> str:
    tail = (proc.stdout[-4000:] + "\n" + proc.stderr[-8000:]).strip()
    if proc.returncode < 0:
        last = ""
        for line in proc.stdout.splitlines():
            if line.startswith("fuzz input: "):
                p = Path(line.split(": ", 1)[1])
                last = p.read_bytes()[:3000].decode("utf-8", "replace") if p.is_file() else ""
                shutil.rmtree(p.parent.parent, ignore_errors=True)
        return f"child killed by signal {-proc.returncode} (a crash in C code?); last input:\n{last}\n{tail}"
    return tail


@pytest.mark.parametrize("which,examples", [("json", 400), ("text", 150), ("rle", 400)])
def test_fuzzed_coco_input_builds_reference_masks_or_raises_a_named_user_error(which, examples):
    proc = run_child(which, examples)
    assert proc.returncode == 0, _outcome(proc)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(f"fuzz {which}: ")), None)
    assert line is not None, proc.stdout[-2000:]
    outcomes = json.loads(line.split("outcomes ", 1)[1])
    # both ways out were taken, so the fuzzing reached the builder and the reference, not only the parser
    want = {"json": ("built", "error"), "text": ("built", "error"), "rle": ("parsed", "decoded")}[which]
    assert all(outcomes.get(k, 0) > 0 for k in want), outcomes


# ------------------------------------------------------------------------------------------------
# Everything below runs in the child process.
# ------------------------------------------------------------------------------------------------


def _limit_memory() -> None:
    import resource

    with open("/proc/self/status") as f:
        vm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    limit = vm_kib * 1024 + HEADROOM_BYTES
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


class _Hang(BaseException):
    """Raised by the alarm; a BaseException so no ``except Exception`` in the code under test eats it."""


def _on_alarm(signum, frame):
    raise _Hang(f"a case ran longer than {CASE_SECONDS} s")


def reference_masks(data: dict, crowd: str) -> dict[str, object]:
    """Masks per file stem from pycocotools: per pixel the covering non-crowd instance that comes first
    in ascending (area, id) order (pixel count when ``area`` is missing), else 255 on a crowd pixel."""
    import numpy as np
    from pycocotools.coco import COCO as PyCOCO

    from wsss_bench.data.classes import coco_category_to_index

    cmap = coco_category_to_index()
    coco = PyCOCO()
    # the builder reads the 80 COCO category ids from wsss_bench.data.classes, not the file's 'categories'
    coco.dataset = {"images": copy.deepcopy(data["images"]), "annotations": copy.deepcopy(data["annotations"])}
    coco.createIndex()
    out = {}
    for img_id, info in coco.imgs.items():
        h, w = info["height"], info["width"]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        bins = []
        for a in anns:
            m = coco.annToMask(a).astype(bool) if a.get("segmentation") else np.zeros((h, w), bool)
            bins.append((a, m))
        mask = np.zeros((h, w), dtype=np.uint8)
        taken = np.zeros((h, w), dtype=bool)
        solid = [(a, m) for a, m in bins if not a.get("iscrowd", 0)]
        solid.sort(key=lambda am: (am[0]["area"] if am[0].get("area") is not None else int(am[1].sum()),
                                   am[0]["id"]))
        for a, m in solid:
            mask[m & ~taken] = cmap[a["category_id"]]
            taken |= m
        if crowd == "ignore":
            for a, m in bins:
                if a.get("iscrowd", 0):
                    mask[m & ~taken] = 255
        out[Path(info["file_name"]).stem] = mask
    return out


def check_one(path: Path, crowd: str = "ignore") -> str:
    """Build every mask of the JSON at ``path``; 'error' or 'built', or raise AssertionError."""
    import numpy as np

    from wsss_bench.data.coco import load_instances, semantic_mask
    from wsss_bench.errors import WsssBenchError

    try:
        images, by_image = load_instances(path)
        got = {i["stem"]: semantic_mask(by_image.get(i["id"], []), i["height"], i["width"], crowd) for i in images}
    except WsssBenchError as e:
        msg = str(e)
        assert str(path) in msg and "\n" not in msg, msg
        return "error"
    data = json.loads(path.read_text(encoding="utf-8-sig"))
    want = reference_masks(data, crowd)
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    for stem, m in got.items():
        assert m.dtype == np.uint8 and m.shape == want[stem].shape, stem
        diff = np.argwhere(m != want[stem])
        assert diff.size == 0, f"{stem}: {len(diff)} pixels differ, first at {diff[0].tolist()}"
    return "built"


def _valid_doc() -> dict:
    import numpy as np
    from conftest import coco_instances
    from pycocotools import mask as mask_utils

    block = np.zeros((24, 28), dtype=np.uint8, order="F")
    block[3:14, 3:12] = 1
    rle = mask_utils.encode(np.asfortranarray(block))
    return coco_instances({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")})


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _get(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def main(which: str, examples: int) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    import wsss_bench.data.coco  # noqa: F401 - imported before the memory limit is set

    _limit_memory()
    signal.signal(signal.SIGALRM, _on_alarm)
    fuzz = settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)
    tmp = Path(tempfile.mkdtemp(prefix="coco-fuzz-"))
    path = tmp / "annotations" / "instances_val2014.json"
    path.parent.mkdir()
    print(f"fuzz input: {path}", flush=True)  # what the parent shows if this process crashes
    valid = _valid_doc()
    paths = [p for p in _paths(valid) if p]
    outcomes: dict[str, int] = {}

    def run(text: str | bytes) -> None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        signal.alarm(CASE_SECONDS)
        try:
            r = check_one(path)
        finally:
            signal.alarm(0)
        outcomes[r] = outcomes.get(r, 0) + 1

    hostile = st.one_of(
        st.none(), st.booleans(), st.integers(-(2 ** 40), 2 ** 40), st.integers(-3, 50),
        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
        st.sampled_from([0, 1, -1, 2, 4, 6, 7, 12, 83, 90, 91, 42, 9, 7000, 200000, 2 ** 31, 2 ** 32, 10 ** 30, 10 ** 400,
                         1e12, -1e12, 0.5, 1e-300, "42", "0", "", [], {}, [[]], [[1, 2, 3, 4]], [[1, 2]],
                         [1, 2, 3, 4, 5, 6], [[0, 0, 10, 0, 10, 10]], {"size": [30, 40], "counts": [1200]},
                         {"size": [30, 40], "counts": "PY1"}, {"size": [30, 40]}, [{"size": [30, 40], "counts": [1200]}],
                         float("nan"), float("inf"), float("-inf")]),
        st.lists(st.integers(-5, 1300), max_size=8),
        st.lists(st.floats(-100, 100, allow_nan=False), min_size=0, max_size=10),
    )
    mutation = st.tuples(st.sampled_from(["set", "delete", "duplicate", "append", "nudge"]),
                         st.sampled_from(paths), hostile, st.integers(-3, 3))

    def mutate(doc: dict, op: str, where: tuple, value, delta: int) -> None:
        try:
            parent, key = _get(doc, where[:-1]), where[-1]
            old = parent[key]
        except (KeyError, IndexError, TypeError):
            return  # an earlier mutation removed this place
        if op == "set":
            parent[key] = value
        elif op == "delete":
            del parent[key]
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(old))
        elif op == "append" and isinstance(old, list):
            old.append(value)
        elif op == "nudge" and type(old) in (int, float):
            parent[key] = old + delta if delta else old * 10 ** 9

    if which == "json":
        @fuzz
        @given(st.lists(mutation, min_size=1, max_size=3))
        def fuzz_json(muts):
            doc = copy.deepcopy(valid)
            for m in muts:
                mutate(doc, *m)
            run(json.dumps(doc))

        fuzz_json()
    elif which == "text":
        base = json.dumps(valid).encode()

        @fuzz
        @given(st.floats(0, 1, exclude_max=True), st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                                     st.integers(0, 255)), max_size=4))
        def fuzz_text(cut, flips):
            data = bytearray(base[: max(1, int(len(base) * (1 - cut / 4)))])
            for where, value in flips:
                data[int(where * len(data))] = value
            run(bytes(data))

        fuzz_text()
    elif which == "rle":
        import numpy as np
        from pycocotools import mask as mask_utils

        from wsss_bench.data.coco import rle_string_counts

        @fuzz
        @given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2 ** 32 - 1),
               st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(48, 111)), max_size=3),
               st.text(alphabet=st.characters(min_codepoint=40, max_codepoint=120), max_size=12))
        def fuzz_rle(h, w, seed, flips, junk):
            m = np.random.default_rng(seed).integers(0, 2, (h, w), dtype=np.uint8)
            enc = mask_utils.encode(np.asfortranarray(m))["counts"].decode("ascii")
            flat = m.flatten(order="F")
            runs, cur, n = [], 0, 0
            for v in flat:  # the runs by hand: zeros first, alternating
                if v != cur:
                    runs.append(n)
                    cur, n = v, 0
                n += 1
            runs.append(n)
            assert rle_string_counts(enc) == runs, (enc, runs)
            chars = list(enc)
            for where, value in flips:
                chars[int(where * len(chars))] = chr(value)
            for s in ("".join(chars), junk, enc + junk):
                counts = rle_string_counts(s)
                if counts is None:
                    continue  # malformed: refused before pycocotools sees it
                # well formed: rleFrString reads the same counts (modulo 2**32, as it stores uint32);
                # its area (the odd runs) is safe to ask for even when the runs do not fit the image
                area = int(mask_utils.area({"size": [h, w], "counts": s}))
                assert area == sum(c % 2 ** 32 for c in counts[1::2]) % 2 ** 32, (s, counts, area)
                outcomes["parsed"] = outcomes.get("parsed", 0) + 1
                if min(counts, default=0) < 0 or sum(counts) != h * w:
                    continue  # refused: decoding would write outside the mask or leave it unset
                signal.alarm(CASE_SECONDS)
                try:
                    got = mask_utils.decode({"size": [h, w], "counts": s})
                finally:
                    signal.alarm(0)
                ref = np.repeat(np.arange(len(counts)) % 2, counts).astype(np.uint8).reshape((w, h)).T
                assert np.array_equal(got, ref), (s, counts)
                outcomes["decoded"] = outcomes.get("decoded", 0) + 1

        fuzz_rle()
    else:
        raise SystemExit(f"unknown fuzz target {which!r}")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"fuzz {which}: {examples} examples; outcomes {json.dumps(dict(sorted(outcomes.items())))}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
