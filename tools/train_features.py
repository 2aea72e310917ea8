#!/usr/bin/env python3
"""Train the SuperPoint network self-supervised (same as ``slam train-features``); see the README for the
command that produced the shipped weights."""

import sys

from slam.features.train_command import main

if __name__ == "__main__":
    sys.exit(main())
