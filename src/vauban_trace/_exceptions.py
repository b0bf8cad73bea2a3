"""The error tree of vauban-trace, drawn in one place.

::

    VaubanTraceError
    ├── ContractError            a record or trace breaks the contract (names the offending id/key)
    ├── ArtifactStoreError       the content-addressed store refused or failed
    │   ├── InvalidDigestError   a digest string is malformed or uses an unknown algorithm
    │   ├── UnsafeLocationError  a digest/URI would reach outside the store's root
    │   ├── BlobNotFoundError    no blob with that digest
    │   └── IntegrityError       stored bytes do not hash to their digest
    ├── RebuildError             OTLP data could not be decoded into traces
    ├── TraceStoreError          the trace database failed or has no such trace
    │   └── TraceNotFoundError
    ├── SourceError              a trace source (file, Jaeger, Tempo) is unreachable or answered garbage
    ├── ExecutorError            an executor cannot do what was asked (bad layer, missing model...)
    ├── ConfigurationError       bad settings (environment variables, CLI flags)
    ├── LoadGeneratorError       the open loop's arrival generator process exited, went silent or has another clock
    └── ReportError              a report was asked of something that is not a trace
        └── ClaimsFileError      a claims file is not valid (names the entry and key)

Third-party errors are mapped at the boundary with ``raise ... from exc``; exceptions raised by
user code inside instrumented stages are never wrapped: they propagate unchanged.
"""

from __future__ import annotations


class VaubanTraceError(Exception):
    """Base class of every error this library raises on its own account."""


class ContractError(VaubanTraceError, ValueError):
    """A trace record violates the contract; the message names the offending id or key."""


class ArtifactStoreError(VaubanTraceError):
    """The artifact store refused or failed an operation."""


class InvalidDigestError(ArtifactStoreError, ValueError):
    """A digest is not ``<algorithm>:<lowercase hex>`` of a supported algorithm."""


class UnsafeLocationError(ArtifactStoreError, ValueError):
    """A digest, key or URI would resolve outside the store's root."""


class BlobNotFoundError(ArtifactStoreError, KeyError):
    """The store holds no blob with the requested digest."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "blob not found"


class IntegrityError(ArtifactStoreError):
    """Stored bytes do not hash to the digest they are stored under."""


class RebuildError(VaubanTraceError, ValueError):
    """OTLP data (protobuf or JSON) could not be decoded into traces."""


class TraceStoreError(VaubanTraceError):
    """The trace database failed."""


class TraceNotFoundError(TraceStoreError, KeyError):
    """No trace with that id in the source or store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "trace not found"


class SourceError(VaubanTraceError):
    """A trace source could not be read (down, refused, or answered something unparseable)."""


class ExecutorError(VaubanTraceError, ValueError):
    """An executor cannot perform the request (bad layer index, missing model directory...)."""


class ConfigurationError(VaubanTraceError, ValueError):
    """Invalid configuration: environment variables, arguments or flags."""


class LoadGeneratorError(VaubanTraceError, RuntimeError):
    """The open-loop sweep's out-of-process arrival generator failed (exited, went silent, or its clock is
    not the serving process's); the message names the process, its exit code and the end of its stderr."""


class ReportError(VaubanTraceError, ValueError):
    """Evidence, a diff or a report was asked of arguments that are not traces."""


class ClaimsFileError(ReportError):
    """A claims file is not valid JSON of the documented schema (names the entry and key)."""


__all__ = [
    "ArtifactStoreError",
    "BlobNotFoundError",
    "ClaimsFileError",
    "ConfigurationError",
    "ContractError",
    "ExecutorError",
    "IntegrityError",
    "InvalidDigestError",
    "LoadGeneratorError",
    "RebuildError",
    "ReportError",
    "SourceError",
    "TraceNotFoundError",
    "TraceStoreError",
    "UnsafeLocationError",
    "VaubanTraceError",
]
