"""Differential privacy: the ``[dp]``/``[sampling]`` config, accounting, client sampling and budgets (TF-free)."""
