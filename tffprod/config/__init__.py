"""The ground floor of configuration, shared by the coordinator, the sites and the registry: TOML files,
field checks with one-line errors, the naming rules, and the ``[reliability]`` table.

TF-free. The session spec itself is :mod:`tffprod.sessions.spec` (it embeds the privacy tables);
a site's config is :mod:`tffprod.executors.config`.
"""
