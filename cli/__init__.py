"""The ``tffprod`` command line (installed as ``tffprod.cli``)."""

import os

# Quiet the C++ start-up chatter of TensorFlow and gRPC (CUDA probing, fork notices) before any
# command imports them; Python-level errors still surface as tffprod errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
