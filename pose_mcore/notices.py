"""Third-party warnings that say nothing to a user of pose_mcore's commands, filtered at the entry points
(``pose-train``, ``pose-convert``, the tools). Importing this module imports nothing heavy, so the filter
is in place before megatron-core is imported (it warns at import)."""

from __future__ import annotations

import logging
import warnings

THIRD_PARTY_NOTICES = (
    "Transformer Engine and Apex are not installed",  # megatron-core falls back to torch: expected on the CPU
    ".*tp_group is None",
    ".*CUDA_DEVICE_MAX_CONNECTIONS",
    ".*is deprecated",
    ".*full scope is deprecated",
)
"""Message patterns (regular expressions matched at the start of the message)."""

QUIET_LOGGERS = ("torch.utils.cpp_extension",)
"""Loggers kept to errors: a CUDA build of torch on a machine without CUDA logs "No CUDA runtime is found"
when megatron-core imports the extension builder."""


def quiet_third_party_warnings() -> None:
    """Ignore the warnings of :data:`THIRD_PARTY_NOTICES` and the loggers of :data:`QUIET_LOGGERS` in this
    process."""
    for message in THIRD_PARTY_NOTICES:
        warnings.filterwarnings("ignore", message=message)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
