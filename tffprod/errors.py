"""The tffprod exception tree.

Every error a user can cause or meet is one of these; the CLI maps them to
messages and exit codes in exactly one place (``tffprod.cli.errors``).

    TffprodError
    ├── SpecError            a session spec is malformed (unknown key, wrong type, missing field)
    ├── TaskLoadError        a ``module:attribute`` task path does not import or is not a Task
    ├── NotFoundError        an unknown dataset, session, site or model version
    ├── DatasetError         a data file is missing, corrupt, or does not match its schema
    │   └── SchemaMismatchError  a dataset's schema does not match the task's
    ├── RegistryError        the registry file cannot be opened or written
    ├── SessionError         training failed after the session was recorded
    ├── PrivacyBudgetError   a session would exceed a dataset's remaining privacy budget
    ├── AuditError           the coordinator's audit log does not verify (an entry edited, inserted or deleted)
    └── AccessDeniedError    a site is not on a model version's access list
"""

from __future__ import annotations


class TffprodError(Exception):
    """Base class of every error tffprod raises on purpose."""

    exit_code = 1


class SpecError(TffprodError):
    """A session spec is malformed."""

    exit_code = 2


class TaskLoadError(TffprodError):
    """A task path does not name an importable ``tffprod.Task``."""

    exit_code = 2


class NotFoundError(TffprodError):
    """Something named by the user is not in the registry."""

    exit_code = 3


class DatasetError(TffprodError):
    """A data file is missing, unreadable, corrupt, or off its schema."""

    exit_code = 4


class SchemaMismatchError(DatasetError):
    """A dataset's schema does not match what the task consumes."""


class RegistryError(TffprodError):
    """The registry cannot be opened, migrated or written."""

    exit_code = 5


class SessionError(TffprodError):
    """A recorded session failed while running."""

    exit_code = 6


class PrivacyBudgetError(TffprodError):
    """A session would spend more privacy than a dataset's remaining budget allows."""

    exit_code = 9


class AuditError(TffprodError):
    """The coordinator's audit log does not verify: an entry was edited, inserted or deleted.

    Attributes:
        report: What ``Registry.verify_audit`` found (``ok``, ``entries``, ``head``, ``problem``).
    """

    exit_code = 11

    def __init__(self, message: str, *, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report


class AccessDeniedError(TffprodError):
    """A model version is not to be released to this site (it is not on the version's access list)."""

    exit_code = 12


class CheckpointError(SessionError):
    """A round checkpoint is missing, damaged, or does not fit the session's training process."""

    exit_code = 13


class PlanError(TffprodError):
    """A plan cannot be read, does not verify, or cannot be approved at this site."""

    exit_code = 10
