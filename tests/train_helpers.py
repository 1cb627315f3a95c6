"""Helpers for the train-seg tests: a very small recipe file, the CLI with train-seg, torchrun."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from wsss_bench.training.recipes import recipes_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def dump_toml(data: dict[str, Any]) -> str:
    """Enough TOML for a recipe: scalars, lists, tables, arrays of tables."""
    lines: list[str] = []
    tables: list[tuple[str, dict]] = []
    arrays: list[tuple[str, list[dict]]] = []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        for k, v in table.items():
            if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                arrays.append((f"{name}.{k}", v))
            else:
                lines.append(f"{k} = {_toml_value(v)}")
    for name, items in arrays:
        for item in items:
            lines.append(f"\n[[{name}]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def write_test_recipe(path: Path, packaged_init: bool = False, **changes: Any) -> Path:
    """The packaged tiny-synthetic recipe made smaller still (a handful of iterations on 32 px crops,
    from scratch unless ``packaged_init``: then from the recipe's packaged pretrained backbone);
    ``changes`` are ``"table.key"`` (or top-level ``"key"``) overrides."""
    data = tomllib.loads((recipes_dir() / "tiny-synthetic.toml").read_text())
    data["name"], data["version"] = "test-tiny", 1
    if not packaged_init:
        data.pop("init_file", None)
    data["schedule"].update(iterations=6, batch=4, micro_batch=2, checkpoint_every=2)
    data["augment"].update(crop=32, scales=[0.75, 1.0])
    data["test"] = {"settings": "native"}
    for key, value in changes.items():
        table, _, k = key.partition(".")
        if k:
            data.setdefault(table, {})[k] = value
        else:
            data[table] = value
    path.write_text(dump_toml(data))
    return path


def cli_main(argv: list[str]) -> int:
    """``wsss-bench ARGV`` in this process: ``wsss_bench.cli.main``."""
    from wsss_bench import cli

    return cli.main(argv)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
