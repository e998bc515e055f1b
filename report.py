"""Tables and figures of a sweep:  python report.py multirun/<sweep dir> [--out DIR] [--ttest A B]

See src/mllmrec/report.py (and docs/sweeps.md) for what is written.
"""

import sys

from mllmrec.report import main

if __name__ == "__main__":
    sys.exit(main())
