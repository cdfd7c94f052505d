"""The tffprod exception tree: every error tffprod raises on purpose, with its exit code.

Every error a user can cause or meet is one of these; the CLI maps them to
messages and exit codes in exactly one place (``tffprod.cli.errors``), and a
test keeps this tree, the classes and ``tffprod.__all__`` in step.

    TffprodError                      exit 1 unless noted
    ├── SpecError                  2  a session spec is malformed (unknown key, wrong type, missing field)
    ├── TaskLoadError              2  a ``module:attribute`` task path does not import or is not a Task
    ├── NotFoundError              3  an unknown dataset, session, site or model version
    ├── DatasetError               4  a data file is missing, corrupt, or does not match its schema
    │   └── SchemaMismatchError    4  a dataset's schema does not match the task's
    ├── RegistryError              5  the registry file cannot be opened or written
    ├── SessionError               6  training failed after the session was recorded
    │   └── CheckpointError       13  a round checkpoint is missing, damaged or does not fit
    ├── CertError                  7  a certificate or key cannot be created, read or written
    ├── SiteCheckError             8  a site cannot be reached, refuses this coordinator, or is incompatible
    │   └── SiteUnreachableError   8  no TLS connection to a site at all (down, starting, wrong address)
    ├── PrivacyBudgetError         9  a session would exceed a dataset's remaining privacy budget
    ├── PlanError                 10  a plan cannot be read, does not verify, or cannot be approved here
    ├── AuditError                11  the coordinator's audit log does not verify (an entry edited, inserted or deleted)
    ├── AccessDeniedError         12  a site is not on a model version's access list
    ├── SiteUnavailableError          a site's service did not answer (the round router retries, then gives up)
    ├── ReleaseRefusedError           a (simulated) site refused or failed a release
    ├── WorkerError                   a TFF worker process could not be started or died
    ├── GatewayError                  a site's gateway cannot start (e.g. its address cannot be bound)
    ├── SiteError                     a site cannot be served (its state folder is in use)
    ├── FederationError               a site process of the local (demo/test) federation failed to start
    └── KitError                      a site kit cannot be made (no checkout to build it from, the build
                                      or the lock export failed, its folder is taken)
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


class FederationError(TffprodError):
    """A site process of the local federation failed to start."""


class SiteCheckError(TffprodError):
    """A site cannot be reached, refuses this coordinator, or is incompatible."""

    exit_code = 8


class SiteUnreachableError(SiteCheckError):
    """No TLS connection to a site at all (down, still starting, or the wrong address)."""


class SiteUnavailableError(TffprodError):
    """An executor service did not answer (gRPC UNAVAILABLE or FAILED_PRECONDITION)."""

    attempts: int  # set by the round router when it gives up: how often the site was tried


class ReleaseRefusedError(TffprodError):
    """A simulated site refused or failed a release; the message is the site's one-line reason."""


class WorkerError(TffprodError):
    """A worker could not be started or died."""


class CertError(TffprodError):
    """A certificate or key cannot be created, read or written."""

    exit_code = 7


class GatewayError(TffprodError):
    """The gateway cannot start (for instance, its address cannot be bound)."""


class SiteError(TffprodError):
    """A site cannot be served (its state folder is in use by another site process)."""


class KitError(TffprodError):
    """A site kit cannot be made: no checkout to build it from, the build or the lock export failed, or
    its folder is taken."""
