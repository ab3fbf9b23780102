"""``python -m mmcmt.check [--device cuda|cpu|...] [--arch small]
[--quick]``: see :mod:`mmcmt.check`."""
import sys

from mmcmt.check import main
from mmcmt.engine import run_main

if __name__ == '__main__':  # (the benchmark's memory processes import it)
    run_main(lambda: sys.exit(main()))
