"""The training loop (``trainer``), optimiser step (``optim``), checkpoints and logging.

Nothing is re-exported here: the phases import ``training.optim`` and the trainer imports the
phases, so importing the trainer from this package's ``__init__`` would be circular."""
