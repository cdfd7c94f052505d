"""The coordinator's view of sites: connections (mTLS, headers) and site administration (add, check, sync)."""
