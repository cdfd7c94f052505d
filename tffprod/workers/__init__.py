"""TFF's ``worker_binary`` as an OS process: started, watched and stopped (``process``), and
optionally isolated in a network namespace behind a Unix socket (``isolation``).

Shared by the coordinator (its local workers) and the sites (their supervised worker). TF-free.
"""
