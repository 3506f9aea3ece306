"""The training command's own arguments."""

from __future__ import annotations

import subprocess
import sys


def test_help_lists_the_options():
    proc = subprocess.run([sys.executable, "-m", "pose_mcore.cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    for option in ("--config", "--resume", "--exit-after", "key.path=value"):
        assert option in proc.stdout
