"""What crosses the coordinator-site wire: the release protocol, its terms, tensors and TFF's protos (TF-free)."""
