#!/usr/bin/env python3
"""Compare SIFT, ORB and SuperPoint on held-out homography pairs (same as ``slam bench-features``)."""

import sys

from slam.features.bench_command import main

if __name__ == "__main__":
    sys.exit(main())
