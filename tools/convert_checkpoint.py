#!/usr/bin/env python
"""Checkpoint converter (also installed as ``pose-convert``): see ``pose_mcore.checkpoint.command``."""

import sys

from pose_mcore.cli import convert

if __name__ == "__main__":
    sys.exit(convert())
