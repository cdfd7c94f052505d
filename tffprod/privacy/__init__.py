"""Differential privacy: the ``[dp]``/``[sampling]`` tables (``config``), the DP mechanisms
(``mechanisms``, a plug-point), accounting (dp_accounting), client sampling, and a plan's privacy
terms as coordinator and sites both read them. TF-free; a mechanism imports TFF only to build its
aggregator."""
