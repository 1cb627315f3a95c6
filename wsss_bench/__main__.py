"""``python -m wsss_bench`` (used by ``torchrun ... -m wsss_bench run``)."""

from wsss_bench.cli import run_main

run_main()
