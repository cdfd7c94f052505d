"""The TFF mechanics of one round: learning processes, the per-site router, the trainer, evaluation, checkpoints.

No registry and no CLI here: :mod:`tffprod.sessions` drives these."""
