"""Errors that users see as one clear line (the CLI prints the message and exits non-zero)."""
class RecsysError(Exception):
    """Base class of every error the CLI reports as a one-line message."""
class DataValidationError(RecsysError):
    """Input data breaks the data contract; the message names file, column and rows."""
class ArtifactError(RecsysError):
    """A model artifact is missing, corrupt or incompatible."""
class ConfigError(RecsysError):
    """A configuration file is invalid."""
class ClusterError(RecsysError):
    """The Kubernetes API server or Kubeflow answered with an error."""
class DataSourceError(RecsysError):
    """A data source cannot be reached or read (no such bucket, access denied, unreachable)."""
