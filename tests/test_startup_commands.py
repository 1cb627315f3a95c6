"""Commands that load no model start without torch: ``methods`` (listing adapters and segmenters reads
only their class attributes), ``compare`` (numpy only: no pandas, no matplotlib) and ``leaderboard``
(pandas and matplotlib, no torch). Each case runs in a fresh interpreter and reports which heavy
modules it loaded; timings are measured outside the tests (see the report of this change).

Neither ``wsss_bench.refine`` (imported by the segmenter base for ``CRFParams``) nor
``wsss_bench.metrics.functional`` (imported by the bootstrap) imports torch at module level; both
are checked on their own below, so a regression names its module.

Also here: the names moved out of the adapter modules (networks in ``methods/nets``,
``segmenters/nets``) are still importable from where they were, and a third-party adapter that
imports torch at module level still works.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from reports_helpers import make_voc, pseudo_record

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "torchvision", "pandas", "matplotlib", "cv2", "scipy",
         "wsss_bench.methods.nets", "wsss_bench.segmenters.nets", "wsss_bench.methods.backbones.vit",
         "wsss_bench.inference", "wsss_bench.metrics.sweep")

LOADED = "[m for m in " + repr(HEAVY) + " if m in sys.modules]"
PROBE = """
import contextlib, io, json, sys
from wsss_bench.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "out": out.getvalue(), "modules": LOADED}))
""".replace("LOADED", LOADED)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}


def run_fresh(code: str, *argv: str) -> dict:
    res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=_env(),
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["wsss_bench.refine", "wsss_bench.metrics.functional",
                                    "wsss_bench.evaluate", "wsss_bench.commands.eval_cmd"])
def test_modules_the_light_commands_use_import_no_torch(module):
    code = f"import json, sys, {module}\nprint(json.dumps('torch' in sys.modules))"
    assert run_fresh(code) is False, f"{module} imports torch"


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("startup")
    root, _ = make_voc(tmp / "voc", n=6)
    a = pseudo_record(root, tmp / "records", "edam", 0.6, 1)
    b = pseudo_record(root, tmp / "records", "cam", 0.3, 2)
    return tmp, a, b


def test_methods_lists_every_builtin_without_torch_or_network_code():
    got = run_fresh(PROBE, "methods")
    assert got["rc"] == 0
    for name in ("cam", "edam", "getam", "ad-cam", "more", "center-prior", "deeplabv2", "deeplabv3plus"):
        assert name in got["out"], name
    assert got["modules"] == [], got["modules"]


def test_adapter_and_segmenter_classes_and_instances_need_no_torch():
    """Loading every built-in plug-in class and constructing it (no build) imports no torch."""
    code = """
import json, sys
from wsss_bench.methods.registry import installed_methods
from wsss_bench.segmenters.registry import installed_segmenters
methods, segs = installed_methods(), installed_segmenters()
described = [cls(5).describe()["name"] for cls in methods.values()] + [cls(6).describe()["name"] for cls in segs.values()]
print(json.dumps({"described": described, "modules": LOADED}))
""".replace("LOADED", LOADED)
    got = run_fresh(code)
    assert {"cam", "edam", "getam", "ad-cam", "more", "center-prior", "deeplabv2", "deeplabv3plus"} <= set(got["described"])
    assert got["modules"] == [], got["modules"]


def test_compare_needs_neither_torch_nor_pandas_nor_matplotlib(records):
    _, a, b = records
    got = run_fresh(PROBE, "compare", str(a), str(b), "--resamples", "50")
    assert got["rc"] == 0 and "mIoU points" in got["out"]
    assert got["modules"] == [], got["modules"]


def test_leaderboard_needs_no_torch(records, tmp_path):
    tmp, _, _ = records
    got = run_fresh(PROBE, "leaderboard", str(tmp / "records"), "--out", str(tmp_path / "lb"), "--ci",
                    "--ci-resamples", "20")
    assert got["rc"] == 0 and (tmp_path / "lb" / "index.html").is_file()
    assert [m for m in got["modules"] if m not in ("pandas", "matplotlib")] == [], got["modules"]


@pytest.mark.parametrize("extra", [["--no-plots"], ["--format", "csv,tex"]], ids=" ".join)
def test_leaderboard_without_plots_needs_no_matplotlib(records, tmp_path, extra):
    tmp, _, _ = records
    got = run_fresh(PROBE, "leaderboard", str(tmp / "records"), "--out", str(tmp_path / "lb"), *extra)
    assert got["rc"] == 0 and not (tmp_path / "lb" / "plots").exists()
    assert got["modules"] == ["pandas"], got["modules"]


@pytest.mark.parametrize("argv", [["leaderboard", "--help"], ["compare", "--help"], ["export-voc-test", "--help"]],
                         ids=" ".join)
def test_report_help_imports_no_pandas(argv):
    got = run_fresh(PROBE, *argv)
    assert got["rc"] == 0 and got["modules"] == [], got["modules"]


MOVED = {
    "wsss_bench.methods.cam": ("wsss_bench.methods.nets.cam", ["CAMNet", "build_resnet", "fill_batchnorm_counters"]),
    "wsss_bench.methods.edam": ("wsss_bench.methods.nets.edam", ["EDAMNet", "da_maps"]),
    "wsss_bench.methods.getam": ("wsss_bench.methods.nets.getam", ["GETAMNet", "GETAMBackbone", "ProjectReadout",
                                                                   "build_getam_backbone", "getam_token_map"]),
    "wsss_bench.methods.adcam": ("wsss_bench.methods.nets.adcam", ["ADCAMNet", "diffuse", "refine_attention",
                                                                   "patch_attention", "mean_attention"]),
    "wsss_bench.methods.more": ("wsss_bench.methods.nets.more", ["MoReNet", "GraphCategoryRepresentation",
                                                                 "lam_from_tokens"]),
    "wsss_bench.segmenters.deeplab": ("wsss_bench.segmenters.nets.deeplab", ["DeepLabV2Net", "DeepLabV3PlusNet",
                                                                             "fill_bn_counters"]),
    "wsss_bench.segmenters.getam_head": ("wsss_bench.segmenters.nets.getam_dpt", ["GETAMDPT", "FusionBlock"]),
    "wsss_bench.segmenters.more_head": ("wsss_bench.segmenters.nets.more", ["MoReSegNet", "LargeFOV"]),
}


@pytest.mark.parametrize("module", sorted(MOVED))
def test_moved_names_are_still_importable_from_the_adapter_module(module):
    target, names = MOVED[module]
    mod, nets = importlib.import_module(module), importlib.import_module(target)
    for name in names:
        assert getattr(mod, name) is getattr(nets, name), name
        assert name in dir(mod)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchNet'"):
        _ = mod.NoSuchNet


def test_getam_segmenter_backbones_are_buildable_vit_names():
    from wsss_bench.methods.backbones.vit import VIT_SPECS
    from wsss_bench.segmenters.getam_head import GETAMSegmenter

    assert set(GETAMSegmenter.backbones) <= set(VIT_SPECS)


def test_a_third_party_adapter_importing_torch_at_module_level_still_works(tmp_path, monkeypatch):
    import torch

    from wsss_bench.methods import registry

    (tmp_path / "ext_adapter.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "from wsss_bench.methods.base import MethodAdapter\n\n"
        "class ExtAdapter(MethodAdapter):\n"
        "    name = 'ext'\n"
        "    backbones = ('none',)\n"
        "    needs_checkpoint = False\n\n"
        "    def build(self):\n"
        "        self.model = nn.Identity()\n"
        "        return self.model\n\n"
        "    def forward_maps(self, views, classes):\n"
        "        return torch.ones(views.shape[0], classes.numel(), *views.shape[-2:])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    real = registry.REGISTRY.entry_points()
    ext = EntryPoint(name="ext", value="ext_adapter:ExtAdapter", group=registry.GROUP)
    monkeypatch.setattr(registry.REGISTRY, "entry_points", lambda: {**real, "ext": ext})
    assert "ext" in registry.installed_methods()
    adapter = registry.load_method("ext")(3)
    adapter.build()
    maps = adapter.forward_maps(torch.zeros(2, 3, 4, 5), torch.tensor([0, 2]))
    assert maps.shape == (2, 2, 4, 5)
