#!/usr/bin/env python
"""Checkpoint converter (also installed as ``pose-convert``): see ``pose_mcore.checkpoint.convert``."""

import sys

from pose_mcore.checkpoint.convert import main

if __name__ == "__main__":
    sys.exit(main())
