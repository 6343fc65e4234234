"""Exceptions raised by `ferry_client`.

Every failure the server reports (a gRPC status) becomes a `FerryError`, or
one of its subclasses for the codes worth catching on their own; the original
`grpc.RpcError` is kept as `__cause__`. The classes follow the `ferry` CLI's
exit codes:

=======================  =====================================================
exception                gRPC codes / situation
=======================  =====================================================
`NotFound`               NOT_FOUND (path, or upload session)
`AlreadyExists`          ALREADY_EXISTS (`overwrite=False` and the path exists)
`PermissionDenied`       PERMISSION_DENIED, UNAUTHENTICATED
`Unavailable`            UNAVAILABLE (cannot connect, server shutting down)
`IntegrityError`         DATA_LOSS; a SHA-256 or size check that failed on the
                         client (download, or the digest in an upload's reply)
`UploadInterrupted`      a resumable upload gave up retrying; the session is
                         kept on the server: continue it with `Client.resume`
`FerryError`             any other code: INVALID_ARGUMENT (bad path, a size or
                         digest that does not match the data), OUT_OF_RANGE,
                         FAILED_PRECONDITION, RESOURCE_EXHAUSTED, INTERNAL, ...
=======================  =====================================================

Local problems are ordinary Python exceptions: a missing local file is
`FileNotFoundError`, a read error `OSError`, a bad argument `ValueError`.
"""

from __future__ import annotations

from typing import Optional

import grpc

__all__ = [
    "FerryError",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "Unavailable",
    "IntegrityError",
    "UploadInterrupted",
]


class FerryError(Exception):
    """A failed ferry call. `code` is the gRPC status code (None for checks
    made by the client itself); `details` the server's message."""

    def __init__(self, details: str, code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(f"{details} ({code.name})" if code is not None else details)
        self.code = code
        self.details = details


class NotFound(FerryError):
    """The path, or the upload session, does not exist (NOT_FOUND)."""


class AlreadyExists(FerryError):
    """A create-only upload found the path taken (ALREADY_EXISTS)."""


class PermissionDenied(FerryError):
    """No or unknown credentials (UNAUTHENTICATED), or a path outside the
    caller's scopes or behind a symbolic link (PERMISSION_DENIED)."""


class Unavailable(FerryError):
    """The server cannot be reached, or is shutting down (UNAVAILABLE)."""


class IntegrityError(FerryError):
    """Data did not match its SHA-256 or size (DATA_LOSS, or a client-side check)."""


class UploadInterrupted(FerryError):
    """A resumable upload failed transiently more times in a row than the
    retry policy allows. The session stays on the server (for 24 h by
    default): `Client.resume(e.upload_id, local_path)` continues it at
    `committed_offset`, or `Client.abort_upload(e.upload_id)` discards it."""

    def __init__(
        self, details: str, code: Optional[grpc.StatusCode], upload_id: str, committed_offset: Optional[int]
    ) -> None:
        super().__init__(details, code)
        self.upload_id = upload_id
        self.committed_offset = committed_offset


_BY_CODE = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DATA_LOSS: IntegrityError,
}


def from_rpc_error(error: grpc.RpcError) -> FerryError:
    """The `FerryError` for a failed call (raise it `from error`)."""
    method = getattr(error, "code", None)  # a raised grpc.RpcError is also a grpc.Call
    code: Optional[grpc.StatusCode] = method() if callable(method) else None
    method = getattr(error, "details", None)
    details: str = (method() if callable(method) else None) or str(error)
    cls = _BY_CODE.get(code, FerryError) if code is not None else FerryError
    return cls(details, code)
