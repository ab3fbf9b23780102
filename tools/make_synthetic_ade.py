"""``tools/make_synthetic.py ade`` under its older name.

    python tools/make_synthetic_ade.py OUT_DIR [options of make_synthetic.py]
"""
import quiet_imports  # noqa: F401 isort: skip (first: import noise)
import sys

import make_synthetic

from mmcmt.engine import run_main

if __name__ == '__main__':
    run_main(lambda: make_synthetic.main(['ade'] + sys.argv[1:]))
