"""``python -m wsss_bench.training ARGS`` = ``wsss-bench train-seg ARGS`` (also under ``torchrun -m``).

Works whether or not ``wsss_bench.cli`` lists the command module yet.
"""

import sys

from wsss_bench import cli
from wsss_bench.commands import train_cmd

if not any(c.name == "train-seg" for c in cli.app.registered_commands):
    train_cmd.register(cli.app)
sys.exit(cli.main(["train-seg", *sys.argv[1:]]))
