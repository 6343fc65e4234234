"""Python client for ferry (https://example.invalid/ferry): uploads, resumable
uploads, verified downloads, stat, list and delete over gRPC (grpcio).

    from ferry_client import Client

    with Client("127.0.0.1:50051") as ferry:
        info = ferry.upload("model.bin", "models/model.bin")   # resumable, verified
        ferry.download("models/model.bin", "copy.bin")         # verified, renamed into place
        for entry in ferry.list("models"):
            print(entry.path, entry.size, entry.sha256)

Errors reported by the server raise `FerryError` or a subclass (see
`ferry_client.errors`).
"""

from ._client import (
    MAX_CHUNK_SIZE,
    MAX_MESSAGE_SIZE,
    Client,
    EntryKind,
    FileInfo,
    Progress,
    UploadStatus,
)
from .errors import (
    AlreadyExists,
    FerryError,
    IntegrityError,
    NotFound,
    PermissionDenied,
    Unavailable,
    UploadInterrupted,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "FileInfo",
    "EntryKind",
    "UploadStatus",
    "Progress",
    "MAX_CHUNK_SIZE",
    "MAX_MESSAGE_SIZE",
    "FerryError",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "Unavailable",
    "IntegrityError",
    "UploadInterrupted",
]
