"""Certificates: the federation's CA, issuing site and coordinator certificates, identities."""
