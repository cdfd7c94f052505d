"""The coordinator's job, plan -> rounds -> finish. Read this package first.

- ``spec``: the session spec (TOML) and its tables;
- ``planning``: a spec checked against the registry (:class:`SessionPlan`), with ``budgets``;
- ``approval``: the plan document sites approve, and its frozen computations;
- ``runner``: runs a planned session (``train``, ``run_session``, ``train_from_plan``);
- ``rounds``: **the round loop** (``RoundLoop``), with ``reliability`` (quarantine, deadlines);
- ``finish``: evaluate, save artifacts, register the model version;
- ``resume``, ``evaluate`` (a model version at sites), ``analytics`` (custom federated computations).

Crash points for the fault tests are in :mod:`tffprod.training.faults`."""
