"""The error hierarchy: every failure the manager reports is a ``ManagerError``.

The CLI turns these into a one-line message and a non-zero exit code; library users
catch the subclass that matters to them.
"""

from __future__ import annotations


class ManagerError(Exception):
    """Root of every error raised by tritonctl."""

    exit_code = 1


class InvalidNameError(ManagerError):
    """A model or endpoint name that Triton, or the repository layout, cannot accept."""

    exit_code = 2


class ArtifactError(ManagerError):
    """A missing, corrupt or unsupported artifact."""

    exit_code = 2


class ConfigError(ManagerError):
    """A config.pbtxt that cannot be parsed or does not match its artifact."""

    exit_code = 2


class RepositoryError(ManagerError):
    """The model repository is missing, inconsistent, or refuses the operation."""


class VersionExistsError(RepositoryError):
    """A publish asked for a version that is already in the repository."""


class ServerError(ManagerError):
    """Starting, finding or stopping the embedded tritonserver failed."""


class TritonUnreachableError(ManagerError):
    """No Triton server answers at the given URL."""


class TritonTimeoutError(TritonUnreachableError):
    """A Triton server took a request that it answers at once (an index, statistics, a
    config, an unload) and gave no answer within the call timeout: it hangs."""


class ModelNotFoundError(ManagerError):
    """Triton does not know the model, or the repository does not hold it."""


class LoadError(ManagerError):
    """Triton refused or failed to load a model; the message carries Triton's reason."""


class UnloadError(ManagerError):
    """Triton failed to unload a model, or did not free it in time."""


class MemoryBudgetError(ManagerError):
    """A model cannot fit in the memory budget even after evicting all that may go."""


class ControllerRunningError(ManagerError):
    """Another controller loop already watches the repository: two would evict against
    each other's decisions."""


class EndpointError(ManagerError):
    """An endpoint cannot be created or re-pointed as asked."""


class EndpointNotFoundError(EndpointError):
    """No endpoint of that name is in the repository."""


class RolloutError(ManagerError):
    """A rollout cannot start, continue, or was aborted."""


class RolloutNotFoundError(RolloutError):
    """The endpoint has no rollout recorded."""
