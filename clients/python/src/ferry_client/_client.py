"""`Client`: uploads (plain or resumable), downloads, stat, list, delete."""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import random
import secrets
import stat as stat_module
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from . import _proto as pb
from .errors import FerryError, IntegrityError, UploadInterrupted, from_rpc_error

StrPath = Union[str, "os.PathLike[str]"]
#: ``progress(committed_bytes, total_bytes)``; see `Client.upload`.
Progress = Callable[[int, int], None]

#: gRPC max message size, both directions: one 4 MiB chunk plus envelope
#: (docs/protocol.md, "Limits both sides set").
MAX_MESSAGE_SIZE = 4 * 1024 * 1024 + 64 * 1024
#: Largest chunk payload the server accepts.
MAX_CHUNK_SIZE = 4 * 1024 * 1024
#: Trailer carrying the committed offset with an ABORTED upload stream.
COMMITTED_OFFSET_TRAILER = "ferry-committed-offset"

#: Codes a resumable upload retries (as the Rust client does): the connection,
#: the server's availability, a stream preempted or cut short. RESOURCE_EXHAUSTED
#: is retried too when the server says when to come back (a busy slot or request
#: rate, with a ``google.rpc.RetryInfo`` detail), and not otherwise (a file size,
#: quota or full disk, which waiting does not lift).
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)


class EntryKind(str, enum.Enum):
    FILE = "file"
    DIRECTORY = "directory"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class FileInfo:
    """A stored file or directory."""

    path: str
    kind: EntryKind
    #: Bytes (0 for directories).
    size: int
    #: Modification time (UTC), if the server sent one.
    mtime: Optional[datetime]
    #: Permission bits (``mode & 0o777``).
    permissions: int
    #: SHA-256 (hex) of the whole file. Always set by uploads and downloads;
    #: by `Client.stat` and `Client.list` only when the server has it cached.
    sha256: Optional[str]
    #: `mtime` in nanoseconds since the epoch (full precision).
    mtime_ns: Optional[int] = None

    @property
    def is_dir(self) -> bool:
        return self.kind is EntryKind.DIRECTORY

    @classmethod
    def _from_proto(cls, info: Any) -> FileInfo:
        kind = {pb.ENTRY_KIND_FILE: EntryKind.FILE, pb.ENTRY_KIND_DIRECTORY: EntryKind.DIRECTORY}.get(
            info.kind, EntryKind.UNKNOWN
        )
        mtime = mtime_ns = None
        if info.HasField("mtime"):
            mtime_ns = info.mtime.seconds * 1_000_000_000 + info.mtime.nanos
            mtime = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(
                seconds=info.mtime.seconds, microseconds=info.mtime.nanos // 1000
            )
        return cls(
            path=info.path,
            kind=kind,
            size=info.size,
            mtime=mtime,
            permissions=info.permissions,
            sha256=info.sha256 or None,
            mtime_ns=mtime_ns,
        )


@dataclass(frozen=True)
class UploadStatus:
    """A resumable upload session, as `Client.query_upload` reports it."""

    upload_id: str
    #: Where the file will be stored.
    path: str
    #: Durable bytes on the server: where the next stream starts.
    committed_offset: int
    #: The declared size, if any.
    size: Optional[int]


class Client:
    """A connection to a ferry server.

    ``target`` is ``HOST:PORT``; ``https://HOST:PORT`` (or giving
    ``root_certificates``, PEM bytes of the CA to trust) means TLS, with the
    system's roots when ``root_certificates`` is None; ``http://HOST:PORT`` is
    plain text. ``token`` is sent as ``authorization: Bearer TOKEN`` on every
    call. ``chunk_size`` (1 MiB by default, at most 4 MiB) is the payload of
    each upload message.

    Failures reported by the server raise `ferry_client.FerryError` or one of
    its subclasses (see `ferry_client.errors`); local ones raise the usual
    `OSError`s. Only resumable uploads retry; everything else fails at once.

    A client is thread-safe and may be shared; close it (or use ``with``)
    to release the channel.
    """

    #: Resumable uploads give up after this many failed attempts in a row
    #: without the committed offset moving.
    max_attempts_without_progress: int = 8
    #: Backoff between attempts: doubles from ``initial_backoff`` up to
    #: ``max_backoff`` seconds, with jitter (half the step plus up to half).
    initial_backoff: float = 0.1
    max_backoff: float = 5.0

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: Optional[str] = None,
        root_certificates: Optional[bytes] = None,
        chunk_size: int = 1 << 20,
    ) -> None:
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE} bytes, not {chunk_size}")
        tls = root_certificates is not None
        if target.startswith("https://"):
            target, tls = target[len("https://") :], True
        elif target.startswith("http://"):
            if tls:
                raise ValueError("root_certificates given for an http:// target")
            target = target[len("http://") :]
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
            # Accept only uncompressed responses. grpcio otherwise lists gzip in
            # grpc-accept-encoding, and the server then gzips every download:
            # about 40 MB/s instead of over 1 GB/s on loopback, for nothing on
            # incompressible data (docs/operations.md, "Compression").
            ("grpc.compression_enabled_algorithms_bitset", 1),
            # Reconnect about as fast as resumable uploads retry.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ]
        if tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._metadata: Tuple[Tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._stub: Any = pb.FerryStub(self._channel)
        self.chunk_size = chunk_size

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata ------------------------------------------------------------

    def stat(self, remote_path: str) -> FileInfo:
        """Metadata of a file or directory (`NotFound` if it does not exist)."""
        try:
            reply = self._stub.Stat(pb.StatRequest(path=remote_path), metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return FileInfo._from_proto(reply.info)

    def list(self, remote_path: str = "", *, recursive: bool = False) -> Iterator[FileInfo]:
        """The entries of a directory ("" is the root), depth-first and sorted
        by name; the whole subtree with ``recursive``. A file path yields just
        that file. Streams in batches: errors surface while iterating."""
        call = self._stub.List(pb.ListRequest(path=remote_path, recursive=recursive), metadata=self._metadata)
        try:
            for batch in call:
                for entry in batch.entries:
                    yield FileInfo._from_proto(entry)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        finally:
            call.cancel()  # the caller stopped early; a no-op once the stream ended

    def delete(self, remote_path: str) -> None:
        """Deletes a file, or an empty directory."""
        try:
            self._stub.Delete(pb.DeleteRequest(path=remote_path), metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    # -- download ------------------------------------------------------------

    def download(
        self, remote_path: str, local_path: StrPath, *, offset: int = 0, length: Optional[int] = None
    ) -> FileInfo:
        """Downloads ``remote_path`` (or the range ``offset``, ``length``) to
        ``local_path``, replacing it atomically if it exists.

        Bytes stream to a temporary file beside the target (``.NAME.*.ferry-tmp``),
        which is renamed into place only once complete. A whole-file download is
        verified against the server's SHA-256 first (`IntegrityError` if it does
        not match) and gets the remote mtime. Returns the remote file's info
        (describing the whole file, whatever the range). On any failure the
        temporary file is removed and ``local_path`` is left untouched.
        """
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        target = os.fspath(local_path)
        request = pb.DownloadRequest(path=remote_path, offset=offset)
        if length is not None:
            request.length = length
        call, first = self._open_download(request)
        temp: Optional[str] = None
        try:
            if first is None or first.WhichOneof("kind") != "info":
                raise FerryError("download: the server did not start with the file's info")
            info = FileInfo._from_proto(first.info)
            whole = offset == 0 and (length is None or length >= info.size)
            expected = max(0, min(info.size, offset + length if length is not None else info.size) - offset)

            directory, name = os.path.split(os.path.abspath(target))
            temp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.ferry-tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            digest = hashlib.sha256()
            written = 0
            with os.fdopen(fd, "wb") as out:
                for reply in call:
                    if reply.WhichOneof("kind") != "chunk":
                        raise FerryError("download: unexpected message after the file's info")
                    data = reply.chunk.data
                    written += len(data)
                    if written > expected:
                        raise IntegrityError(f"download of {remote_path}: more than the {expected} bytes expected")
                    if whole:
                        digest.update(data)
                    out.write(data)
                out.flush()
                os.fsync(out.fileno())
            if written != expected:
                raise IntegrityError(f"download of {remote_path}: {written} bytes received, {expected} expected")
            if whole:
                actual = digest.hexdigest()
                if info.sha256 != actual:
                    raise IntegrityError(
                        f"download of {remote_path}: SHA-256 {actual} does not match the server's {info.sha256}"
                    )
                if info.mtime_ns is not None:
                    os.utime(temp, ns=(info.mtime_ns, info.mtime_ns))
            os.replace(temp, target)
            temp = None
            _fsync_directory(directory)
            return info
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        finally:
            call.cancel()
            if temp is not None:
                _remove_quietly(temp)

    def _open_download(self, request: Any) -> Tuple[Any, Any]:
        """Starts a download and returns the call with its first message.
        Failures before any byte arrives are retried as a resumable upload's
        are (a busy server as it asks, transient failures with backoff),
        since nothing has been written yet; others raise `FerryError`."""
        failures = 0
        while True:
            call = self._stub.Download(request, metadata=self._metadata)
            try:
                # Errors such as NOT_FOUND arrive here, before any local file exists.
                return call, next(call, None)
            except grpc.RpcError as e:
                call.cancel()
                failures += 1
                if not _is_transient(e) or failures >= self.max_attempts_without_progress:
                    raise from_rpc_error(e) from e
                wait = _backoff(self.initial_backoff, self.max_backoff, failures)
                time.sleep(max(wait, min(_retry_after(e) or 0.0, self.max_backoff)))

    # -- upload --------------------------------------------------------------

    def upload(
        self,
        local_path: StrPath,
        remote_path: str,
        *,
        resumable: bool = True,
        overwrite: bool = True,
        progress: Optional[Progress] = None,
    ) -> FileInfo:
        """Uploads a local file to ``remote_path``; returns the stored file.

        The file is read once, chunk by chunk (memory does not grow with its
        size), hashed as it goes; the header declares its size, mtime and
        permission bits, and the finish message its SHA-256, which the server
        checks before committing. The digest in the reply is checked too.
        Nothing appears at ``remote_path`` until the whole file is committed.
        ``overwrite=False`` fails with `AlreadyExists` if the path exists.

        With ``resumable`` (the default) the upload goes through a session
        (CreateUpload + UploadSession): on a transient failure (UNAVAILABLE,
        ABORTED, DEADLINE_EXCEEDED, a dropped connection, ...) it asks the
        server for its committed offset (QueryUpload, or the
        ``ferry-committed-offset`` trailer) and continues from there, with
        exponential backoff, until `max_attempts_without_progress` attempts in
        a row fail without progress; then it raises `UploadInterrupted`, which
        carries the session id for `resume`. If anything else ends the upload
        (a refusal, a local error, KeyboardInterrupt) the session is aborted.
        ``progress(committed, total)`` is called with the bytes the server
        confirmed durable, at the start of each attempt and as they grow.

        Without ``resumable`` it is one plain Upload stream, all or nothing.
        """
        local = os.fspath(local_path)
        header = _header_for(local, remote_path, overwrite)
        if not resumable:
            return self._upload_plain(local, header, progress)
        upload_id = self._create_upload(header)
        try:
            return self._run_session(upload_id, local, progress)
        except UploadInterrupted:
            raise
        except BaseException:
            self._abort_quietly(upload_id)
            raise

    def create_upload(self, local_path: StrPath, remote_path: str, *, overwrite: bool = True) -> str:
        """Opens a resumable upload session for ``local_path`` (its size, mtime
        and permission bits are declared now) and returns the session id, to
        pass to `resume`. Keep the id to continue after a crash of this
        process; sessions untouched for the server's TTL (24 h) expire."""
        local = os.fspath(local_path)
        return self._create_upload(_header_for(local, remote_path, overwrite))

    def resume(self, upload_id: str, local_path: StrPath, *, progress: Optional[Progress] = None) -> FileInfo:
        """Sends ``local_path`` through the session ``upload_id``, from its
        committed offset to the end, then commits; retries like `upload`.

        The file must be the one the session was created for: the part already
        committed is re-hashed from it (it is not sent again), so a changed
        file fails the server's digest check. The session is never aborted
        here: if this raises, the caller decides (`abort_upload`)."""
        return self._run_session(upload_id, os.fspath(local_path), progress)

    def query_upload(self, upload_id: str) -> UploadStatus:
        """The session's committed offset (`NotFound` once it committed,
        was aborted or expired)."""
        try:
            return self._query_raw(upload_id)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def abort_upload(self, upload_id: str) -> None:
        """Discards a resumable upload session and what it holds."""
        try:
            self._stub.AbortUpload(pb.AbortUploadRequest(upload_id=upload_id), metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    # -- internals -----------------------------------------------------------

    def _create_upload(self, header: Any) -> str:
        try:
            reply = self._stub.CreateUpload(pb.CreateUploadRequest(header=header), metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e
        return str(reply.upload_id)

    def _abort_quietly(self, upload_id: str) -> None:
        # Already gone (committed or removed), or unreachable: it expires on its own.
        with contextlib.suppress(grpc.RpcError):
            self._stub.AbortUpload(pb.AbortUploadRequest(upload_id=upload_id), metadata=self._metadata, timeout=10)

    def _upload_plain(self, local: str, header: Any, progress: Optional[Progress]) -> FileInfo:
        size = header.size
        file = open(local, "rb")  # noqa: SIM115 - closed below (and by the generator)
        state = _SendState()

        def requests() -> Iterator[Any]:
            yield pb.UploadRequest(header=header)
            for kind, payload in state.read(file, 0, hashlib.sha256(), self.chunk_size):
                yield pb.UploadRequest(**{kind: payload})

        try:
            reply = self._stub.Upload(requests(), metadata=self._metadata)
        except grpc.RpcError as e:
            state.raise_local_error()
            raise from_rpc_error(e) from e
        finally:
            file.close()
        info = FileInfo._from_proto(reply.file)
        _check_reply(info, state.final_digest)
        if progress is not None:
            progress(size, size)
        return info

    def _run_session(self, upload_id: str, local: str, progress: Optional[Progress]) -> FileInfo:
        """The retry loop around `_attempt`."""
        snapshots = _Snapshots()
        failures = 0  # failed attempts in a row without the committed offset moving
        best = -1  # the highest committed offset seen
        mark: Optional[int] = None  # `best` when `failures` was last reset
        remote_path: Optional[str] = None
        next_offset: Optional[int] = None  # from an ABORTED trailer: no need to query
        while True:
            try:
                if next_offset is None:
                    status = self._query_raw(upload_id)
                    remote_path = status.path
                    size = os.stat(local).st_size
                    if status.size is not None and status.size != size:
                        raise ValueError(f"{local} has {size} bytes; upload {upload_id} was created for {status.size}")
                    next_offset = status.committed_offset
                offset, next_offset = next_offset, None
                best = max(best, offset)
                return self._attempt(upload_id, local, offset, snapshots, progress)
            except grpc.RpcError as e:
                code = _code(e)
                best = max(best, snapshots.acknowledged_offset)
                if code == grpc.StatusCode.NOT_FOUND and remote_path is not None:
                    # The session ended: another stream may have committed it.
                    return self._committed_elsewhere(local, remote_path, snapshots, e)
                if not _is_transient(e):
                    raise from_rpc_error(e) from e
                if mark is None or best > mark:
                    failures, mark = 0, best
                failures += 1
                if failures >= self.max_attempts_without_progress:
                    raise UploadInterrupted(
                        f"upload {upload_id} gave up after {failures} failed attempts in a row: {_details(e)}",
                        code,
                        upload_id,
                        best if best >= 0 else None,
                    ) from e
                if code == grpc.StatusCode.ABORTED:
                    next_offset = _trailer_offset(e)
                wait = _backoff(self.initial_backoff, self.max_backoff, failures)
                time.sleep(max(wait, min(_retry_after(e) or 0.0, self.max_backoff)))

    def _query_raw(self, upload_id: str) -> UploadStatus:
        """QueryUpload, letting grpc.RpcError through (for the retry loop)."""
        reply = self._stub.QueryUpload(pb.QueryUploadRequest(upload_id=upload_id), metadata=self._metadata)
        return UploadStatus(
            upload_id=reply.upload_id,
            path=reply.path,
            committed_offset=reply.committed_offset,
            size=reply.size if reply.HasField("size") else None,
        )

    def _attempt(
        self, upload_id: str, local: str, offset: int, snapshots: _Snapshots, progress: Optional[Progress]
    ) -> FileInfo:
        """One UploadSession stream: from ``offset`` to the end, then finish."""
        hasher = snapshots.take(offset) or _hash_prefix(local, offset)
        total = os.stat(local).st_size
        if progress is not None:
            progress(offset, total)
        state = _SendState(snapshots)
        file = open(local, "rb")  # noqa: SIM115 - closed below (and by the generator)

        def requests() -> Iterator[Any]:
            yield pb.UploadSessionRequest(start=pb.UploadSessionStart(upload_id=upload_id, offset=offset))
            for kind, payload in state.read(file, offset, hasher, self.chunk_size):
                yield pb.UploadSessionRequest(**{kind: payload})

        try:
            call = self._stub.UploadSession(requests(), metadata=self._metadata)
        except BaseException:
            file.close()
            raise
        try:
            for reply in call:
                kind = reply.WhichOneof("kind")
                if kind == "committed_offset":
                    snapshots.acknowledge(reply.committed_offset)
                    if progress is not None:
                        progress(reply.committed_offset, total)
                elif kind == "file":
                    info = FileInfo._from_proto(reply.file)
                    _check_reply(info, state.final_digest)
                    if progress is not None:
                        progress(info.size, total)
                    return info
            state.raise_local_error()
            raise _SessionEnded()
        except grpc.RpcError:
            state.raise_local_error()
            raise
        finally:
            call.cancel()  # a no-op once the stream ended
            file.close()

    def _committed_elsewhere(
        self, local: str, remote_path: str, snapshots: _Snapshots, ended: grpc.RpcError
    ) -> FileInfo:
        """The stored file if it holds exactly ``local`` (by SHA-256);
        otherwise the error that ended the session."""
        try:
            info = self.stat(remote_path)
        except FerryError:
            raise from_rpc_error(ended) from ended
        digest = snapshots.final_digest or _hash_prefix(local, os.stat(local).st_size).hexdigest()
        if info.sha256 != digest:
            raise from_rpc_error(ended) from ended
        return info


class _SessionEnded(grpc.RpcError):
    """The upload stream ended without the stored file: retried like a
    transient failure (UNKNOWN)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNKNOWN

    def details(self) -> str:
        return "the upload stream ended without the stored file"


class _Snapshots:
    """SHA-256 states after each chunk the server has not yet acknowledged,
    so that an attempt can start at any committed offset without re-reading
    the file (docs/protocol.md, "Resumable uploads")."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: Dict[int, Any] = {}
        self.acknowledged_offset = -1
        self.final_digest: Optional[str] = None

    def record(self, offset: int, hasher: Any) -> None:
        with self._lock:
            self._states[offset] = hasher.copy()

    def acknowledge(self, committed: int) -> None:
        with self._lock:
            self.acknowledged_offset = max(self.acknowledged_offset, committed)
            self._states = {k: v for k, v in self._states.items() if k >= committed}

    def take(self, offset: int) -> Any:
        if offset == 0:
            return hashlib.sha256()
        with self._lock:
            state = self._states.get(offset)
            return state.copy() if state is not None else None


class _SendState:
    """Reads, hashes and frames a file for an upload stream. Runs in grpc's
    request thread; a local read error ends the stream (the server keeps or
    discards what it got) and is re-raised in the caller's thread."""

    def __init__(self, snapshots: Optional[_Snapshots] = None) -> None:
        self._snapshots = snapshots
        self.error: Optional[BaseException] = None
        self.final_digest: Optional[str] = None

    def read(self, file: Any, offset: int, hasher: Any, chunk_size: int) -> Iterator[Tuple[str, Any]]:
        with file:
            try:
                file.seek(offset)
                sent = offset
                while True:
                    data = file.read(chunk_size)
                    if not data:
                        break
                    hasher.update(data)
                    sent += len(data)
                    if self._snapshots is not None:
                        self._snapshots.record(sent, hasher)
                    yield "chunk", pb.Chunk(data=data)
            except Exception as e:  # noqa: BLE001 - reported by raise_local_error
                self.error = e
                return
            self.final_digest = hasher.hexdigest()
            if self._snapshots is not None:
                self._snapshots.final_digest = self.final_digest
            yield "finish", pb.UploadFinish(sha256=self.final_digest)

    def raise_local_error(self) -> None:
        if self.error is not None:
            raise self.error


def _header_for(local: str, remote_path: str, overwrite: bool) -> Any:
    st = os.stat(local)
    if stat_module.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{local} is a directory")
    if not stat_module.S_ISREG(st.st_mode):
        raise ValueError(f"{local} is not a regular file")
    seconds, nanos = divmod(st.st_mtime_ns, 1_000_000_000)
    return pb.UploadHeader(
        path=remote_path,
        size=st.st_size,
        mode=pb.WRITE_MODE_OVERWRITE if overwrite else pb.WRITE_MODE_CREATE_ONLY,
        mtime=pb.Timestamp(seconds=seconds, nanos=nanos),
        permissions=stat_module.S_IMODE(st.st_mode) & 0o777,
    )


def _check_reply(info: FileInfo, sent_digest: Optional[str]) -> None:
    if sent_digest is not None and info.sha256 != sent_digest:
        raise IntegrityError(f"upload of {info.path}: the server stored SHA-256 {info.sha256}, we sent {sent_digest}")


def _hash_prefix(local: str, length: int) -> Any:
    """SHA-256 state after the first ``length`` bytes of ``local``."""
    hasher = hashlib.sha256()
    remaining = length
    with open(local, "rb") as file:
        while remaining > 0:
            data = file.read(min(remaining, 1 << 20))
            if not data:
                raise ValueError(f"{local} is shorter than the {length} bytes already uploaded")
            hasher.update(data)
            remaining -= len(data)
    return hasher


# A grpc.RpcError raised by a call is also a grpc.Call (code, details,
# trailers); read them defensively, as the base class has none.


def _code(error: BaseException) -> Optional[grpc.StatusCode]:
    method = getattr(error, "code", None)
    code: Optional[grpc.StatusCode] = method() if callable(method) else None
    return code


def _details(error: BaseException) -> str:
    method = getattr(error, "details", None)
    details: Optional[str] = method() if callable(method) else None
    return details or str(error)


def _trailer_offset(error: BaseException) -> Optional[int]:
    method = getattr(error, "trailing_metadata", None)
    trailers: Any = method() if callable(method) else None
    for key, value in trailers or ():
        if key == COMMITTED_OFFSET_TRAILER:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _retry_after(error: BaseException) -> Optional[float]:
    """Seconds the server asked to wait before retrying (a ``google.rpc.RetryInfo``
    detail in the status), or None if it gave no such advice."""
    method = getattr(error, "trailing_metadata", None)
    trailers: Any = method() if callable(method) else None
    for key, value in trailers or ():
        if key != "grpc-status-details-bin":
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return float(info.retry_delay.ToTimedelta().total_seconds())
    return None


def _is_transient(error: BaseException) -> bool:
    code = _code(error)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return _retry_after(error) is not None
    return code in TRANSIENT_CODES


def _backoff(initial: float, maximum: float, failures: int) -> float:
    step = min(maximum, initial * 2.0 ** min(failures, 16))
    return step / 2 + random.uniform(0, step / 2)


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)
