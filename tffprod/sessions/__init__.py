"""The coordinator's job, plan -> rounds -> finish. Read this package first.

- ``planning``: a spec checked against the registry (:class:`SessionPlan`);
- ``approval``: the plan document sites approve, and its frozen computations;
- ``runner``: runs a planned session (``train``, ``run_session``, ``train_from_plan``);
- ``rounds``: **the round loop** (``RoundLoop``), with ``reliability`` (quarantine, deadlines);
- ``finish``: evaluate, save artifacts, register the model version;
- ``resume``, ``evaluate``, ``analytics``, ``faults`` (crash points for tests)."""
