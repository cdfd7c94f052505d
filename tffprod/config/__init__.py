"""Declarative inputs shared by the coordinator and the sites: TOML files, field checks, the session spec.

TF-free. Imports only :mod:`tffprod.errors` and the :mod:`tffprod.config.privacy` tables it embeds."""
