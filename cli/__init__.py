"""The ``tffprod`` command line (installed as ``tffprod.cli``)."""

import os

# Quiet TensorFlow's and gRPC's start-up chatter before any command imports them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
