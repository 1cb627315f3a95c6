"""``wsss-bench demo train``: reproduce the shipped demo weights."""

from __future__ import annotations

from pathlib import Path

import typer

from wsss_bench.commands._options import DemoModel, value_of
from wsss_bench.commands._ui import console

demo_app = typer.Typer(help="The embedded demo: train its small models (run it with `wsss-bench run`).",
                       no_args_is_help=True)


@demo_app.command("train")
def train_command(
    out: Path = typer.Option(..., "--out", help="Folder for <method>.safetensors and manifest.json."),
    seed: int = typer.Option(0, "--seed", help="Random seed (the shipped weights use 0)."),
    method: list[DemoModel] = typer.Option(None, "--method", help="Train only these methods (repeatable)."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Directory in which to generate the training sets "
                                  "(default: a cached folder in the system temp dir)."),
) -> None:
    """Train the small demo networks on the synthetic set, on CPU, from a seed.

    Example: [bold]wsss-bench demo train --out my-demo-weights --seed 0[/bold]
    """
    from wsss_bench.demo.train import train_demo_models
    from wsss_bench.inference.runner import check_output_folder

    check_output_folder(out, "--out")
    if data_dir is not None:
        check_output_folder(data_dir, "--data-dir")
    path = train_demo_models(out, seed=seed, methods=[value_of(m) for m in method] or None, data_dir=data_dir,
                             log=console.print)
    console.print(f"manifest: {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(demo_app, name="demo")
