"""The CMT variants' parameters and FLOPs: ``tools/get_flops.py --arch``
under its older name.

    python tools/complexity.py [--shape H [W]]
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import sys

import get_flops

from mmcmt.engine import run_main

if __name__ == '__main__':
    run_main(lambda: get_flops.main(['--arch'] + sys.argv[1:]))
