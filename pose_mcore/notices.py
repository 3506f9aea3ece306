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

LOGGED_NOTICES = {"transformers.utils.import_utils": "`CLIPImageProcessor` requires torchvision"}
"""Logger -> the start of a message it logs that says nothing to a user: without torchvision, transformers
answers every import of ``CLIPImageProcessor`` (the Wan and HunyuanVideo I2V pipelines import it) with its
PIL twin ``CLIPImageProcessorPil`` and says so; that is the processor those pipelines then use, and so
pose_mcore through them."""


class _DropMessages(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def quiet_third_party_warnings() -> None:
    """Ignore the warnings of :data:`THIRD_PARTY_NOTICES`, the loggers of :data:`QUIET_LOGGERS` and the messages
    of :data:`LOGGED_NOTICES` in this process."""
    for message in THIRD_PARTY_NOTICES:
        warnings.filterwarnings("ignore", message=message)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for name, start in LOGGED_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and f.start == start for f in logger.filters):
            logger.addFilter(_DropMessages(start))
