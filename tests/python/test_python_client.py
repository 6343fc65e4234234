"""The Python client package (clients/python, `ferry_client`) against a real
`ferry serve`: round trips with SHA-256 checks, ranges, stat/list/delete,
resumable uploads interrupted and continued (by hand, and automatically after
a dropped connection), the documented errors, and tokens over TLS."""

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
from importlib import resources
from pathlib import Path

import ferry_client
import grpc
import pytest
from ferry_client import Client, EntryKind, FerryError, IntegrityError, NotFound

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def write_random(path, size):
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            block = os.urandom(min(remaining, MiB))
            f.write(block)
            remaining -= len(block)
    return path


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """64 MiB of random bytes (two of the server's 32 MiB checkpoints)."""
    path = write_random(tmp_path_factory.mktemp("big") / "big.bin", 64 * MiB)
    return path, sha256_of(path)


@pytest.fixture
def client(ferry_server):
    with Client(ferry_server) as c:
        yield c


def interrupted_upload(server_address, local, remote):
    """Starts a resumable upload through a proxy that cuts the connection
    after 40 MiB, with no retries: returns the session id it leaves behind."""
    proxy = DroppingProxy(server_address, cut_after=40 * MiB)
    try:
        with Client(proxy.address) as flaky:
            flaky.max_attempts_without_progress = 1
            with pytest.raises(ferry_client.UploadInterrupted) as cut:
                flaky.upload(local, remote)
    finally:
        proxy.close()
    assert cut.value.code in ferry_client._client.TRANSIENT_CODES  # UNAVAILABLE, as a rule
    return cut.value.upload_id


def wait_for_committed(client, upload_id):
    """The session's committed offset once it is past 0: the server syncs
    what a dropped stream delivered as it notices the drop."""
    deadline = time.monotonic() + 10
    while (status := client.query_upload(upload_id)).committed_offset == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return status


# -- the package and its copy of the proto ------------------------------------


def test_the_shipped_proto_is_the_repository_proto():
    """The package compiles its own copy of ferry.proto; it must not drift."""
    canonical = (REPO / "proto/ferry/v1/ferry.proto").read_bytes()
    source_copy = REPO / "clients/python/src/ferry_client/proto/ferry/v1/ferry.proto"
    assert source_copy.read_bytes() == canonical, (
        f"{source_copy.relative_to(REPO)} differs from proto/ferry/v1/ferry.proto: copy it over"
    )
    installed = resources.files("ferry_client").joinpath("proto/ferry/v1/ferry.proto").read_bytes()
    assert installed == canonical, "the installed ferry_client is stale: pip install -r tests/python/requirements.txt"

    # And the stub built from the compiled descriptor has every rpc of it.
    from ferry_client import _proto

    lines = canonical.decode().splitlines()
    rpcs = {line.split()[1].split("(")[0] for line in lines if line.strip().startswith("rpc ")}
    assert {m.name for m in _proto.POOL.FindServiceByName("ferry.v1.Ferry").methods} == rpcs


# -- round trips ----------------------------------------------------------------


def test_round_trip_of_64_mib_is_verified_end_to_end(client, big_file, tmp_path):
    local, digest = big_file
    seen = []
    info = client.upload(local, "models/big.bin", progress=lambda done, total: seen.append((done, total)))
    assert (info.path, info.kind, info.size, info.sha256) == ("models/big.bin", EntryKind.FILE, 64 * MiB, digest)
    assert seen[0] == (0, 64 * MiB) and seen[-1] == (64 * MiB, 64 * MiB)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert info.mtime_ns == os.stat(local).st_mtime_ns  # kept from the local file

    assert client.stat("models/big.bin").sha256 == digest

    target = tmp_path / "out" / "big.bin"
    target.parent.mkdir()
    downloaded = client.download("models/big.bin", target)
    assert downloaded.sha256 == digest and sha256_of(target) == digest
    assert os.stat(target).st_mtime_ns == info.mtime_ns
    assert os.listdir(target.parent) == ["big.bin"]  # no temporary file left behind


def test_plain_upload_and_create_only(client, tmp_path):
    local = write_random(tmp_path / "small.bin", 3 * MiB + 17)
    info = client.upload(local, "plain/small.bin", resumable=False)
    assert info.size == 3 * MiB + 17 and info.sha256 == sha256_of(local)

    with pytest.raises(ferry_client.AlreadyExists) as exists:
        client.upload(local, "plain/small.bin", overwrite=False)
    assert exists.value.code == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(ferry_client.AlreadyExists):
        client.upload(local, "plain/small.bin", resumable=False, overwrite=False)

    empty = tmp_path / "empty"
    empty.touch()
    assert client.upload(empty, "plain/empty").sha256 == hashlib.sha256(b"").hexdigest()
    assert client.download("plain/empty", tmp_path / "empty.out").size == 0


def test_download_of_a_range(client, tmp_path):
    local = write_random(tmp_path / "r.bin", 3 * MiB + 123)
    data = local.read_bytes()
    client.upload(local, "r.bin", resumable=False)

    offset, length = MiB + 7, MiB + 100
    info = client.download("r.bin", tmp_path / "part", offset=offset, length=length)
    assert info.size == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()  # the whole file's
    assert (tmp_path / "part").read_bytes() == data[offset : offset + length]

    client.download("r.bin", tmp_path / "tail", offset=len(data) - 10, length=MiB)  # cut at the end
    assert (tmp_path / "tail").read_bytes() == data[-10:]
    client.download("r.bin", tmp_path / "nothing", offset=len(data))  # offset == size: empty
    assert (tmp_path / "nothing").read_bytes() == b""

    with pytest.raises(FerryError) as past_end:
        client.download("r.bin", tmp_path / "never", offset=len(data) + 1)
    assert past_end.value.code == grpc.StatusCode.OUT_OF_RANGE
    assert not (tmp_path / "never").exists()


def test_stat_list_and_delete(client, tmp_path):
    local = write_random(tmp_path / "f", 1000)
    for remote in ["a/one", "a/two", "a/sub/three", "b"]:
        client.upload(local, remote)

    root = {e.path: e.kind for e in client.list()}
    assert root == {"a": EntryKind.DIRECTORY, "b": EntryKind.FILE}
    everything = [e.path for e in client.list("", recursive=True)]
    assert everything == ["a", "a/one", "a/sub", "a/sub/three", "a/two", "b"]
    assert [e.path for e in client.list("a")] == ["a/one", "a/sub", "a/two"]
    assert [e.path for e in client.list("b")] == ["b"]  # a file lists itself

    a = client.stat("a")
    assert a.is_dir and a.sha256 is None
    one = client.stat("a/one")
    assert (one.size, one.sha256, one.permissions) == (1000, sha256_of(local), os.stat(local).st_mode & 0o777)

    with pytest.raises(FerryError) as not_empty:
        client.delete("a/sub")
    assert not_empty.value.code == grpc.StatusCode.FAILED_PRECONDITION
    client.delete("a/sub/three")
    client.delete("a/sub")
    with pytest.raises(NotFound):
        client.stat("a/sub")
    assert [e.path for e in client.list("a")] == ["a/one", "a/two"]


# -- resumable uploads ----------------------------------------------------------


def test_an_interrupted_upload_resumes_from_the_committed_offset(ferry_server, big_file, tmp_path):
    local, digest = big_file
    upload_id = interrupted_upload(ferry_server, local, "resumed/big.bin")

    with Client(ferry_server) as client:  # a new client: it re-hashes the committed prefix
        status = wait_for_committed(client, upload_id)
        assert status.path == "resumed/big.bin" and status.size == 64 * MiB
        assert 0 < status.committed_offset < 64 * MiB
        with pytest.raises(NotFound):
            client.stat("resumed/big.bin")  # nothing visible yet

        starts = []
        info = client.resume(upload_id, local, progress=lambda done, total: starts.append(done))
        assert starts[0] >= status.committed_offset > 0  # continued, not restarted from 0
        assert info.size == 64 * MiB and info.sha256 == digest
        client.download("resumed/big.bin", tmp_path / "back.bin")
        assert sha256_of(tmp_path / "back.bin") == digest
        with pytest.raises(NotFound):
            client.query_upload(upload_id)  # the commit ended the session


class DroppingProxy:
    """A TCP proxy to `upstream` that resets its first connection once
    `cut_after` bytes went from the client to the server."""

    def __init__(self, upstream, cut_after):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.cut_after = cut_after
        self.connections = 0
        self.upstream_bytes = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.listener.close()

    def _accept(self):
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self.lock:
                self.connections += 1
                first = self.connections == 1
            pair = (downstream, upstream)
            limit = self.cut_after if first else None
            threading.Thread(target=self._pump, args=(downstream, upstream, pair, limit), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, pair, None), daemon=True).start()

    def _pump(self, source, sink, pair, limit):
        forwarded = 0
        try:
            while True:
                data = source.recv(1 << 16)
                if not data:
                    break
                sink.sendall(data)
                forwarded += len(data)
                if limit is not None:
                    with self.lock:
                        self.upstream_bytes += len(data)
                    if forwarded >= limit:
                        break
                elif source is pair[0]:
                    with self.lock:
                        self.upstream_bytes += len(data)
        except OSError:
            pass
        for sock in pair:  # one side ended: end both, abruptly
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_a_dropped_connection_is_retried_from_the_committed_offset(ferry_server, big_file):
    local, digest = big_file
    proxy = DroppingProxy(ferry_server, cut_after=40 * MiB)
    try:
        with Client(proxy.address) as client:
            info = client.upload(local, "dropped/big.bin")
    finally:
        proxy.close()
    assert info.sha256 == digest
    assert proxy.connections >= 2  # the first one was cut
    # Continued where the server was, not from 0: far less than two copies went up.
    assert proxy.upstream_bytes < 64 * MiB + 16 * MiB, proxy.upstream_bytes


def test_resume_gives_up_when_the_server_is_gone_and_names_the_session(tmp_path):
    server = ServerProcess(tmp_path / "root")
    local = write_random(tmp_path / "x", 1000)
    with Client(server.address) as client:
        client.max_attempts_without_progress, client.initial_backoff = 3, 0.01
        upload_id = client.create_upload(local, "x")
        server.stop()
        with pytest.raises(ferry_client.UploadInterrupted) as gave_up:
            client.resume(upload_id, local)
        assert gave_up.value.upload_id == upload_id
        assert gave_up.value.code == grpc.StatusCode.UNAVAILABLE
        assert isinstance(gave_up.value, FerryError)


# -- errors -----------------------------------------------------------------------


def test_resuming_with_a_different_file_fails_the_digest_check(ferry_server, client, big_file, tmp_path):
    local, _ = big_file
    upload_id = interrupted_upload(ferry_server, local, "wrong/big.bin")
    assert wait_for_committed(client, upload_id).committed_offset > 0

    # Same size, one byte changed in the part the server already holds: the
    # client re-hashes that part from the local file, the server hashed what
    # it received, and the two digests disagree at commit.
    changed = tmp_path / "changed.bin"
    shutil.copyfile(local, changed)
    with open(changed, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    with pytest.raises(FerryError) as mismatch:
        client.resume(upload_id, changed)
    assert mismatch.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(mismatch.value.__cause__, grpc.RpcError)
    with pytest.raises(NotFound):
        client.stat("wrong/big.bin")  # nothing committed
    with pytest.raises(NotFound):
        client.query_upload(upload_id)  # and the session is gone


def test_missing_files_and_bad_requests(client, tmp_path):
    tmp_path = tmp_path / "local"  # (the server's root is in tmp_path too)
    tmp_path.mkdir()
    with pytest.raises(FileNotFoundError):
        client.upload(tmp_path / "no-such-file", "x")
    with pytest.raises(NotFound):
        client.stat("x")  # nothing was created

    with pytest.raises(NotFound) as missing:
        client.download("no/such/file", tmp_path / "out")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND and "no/such/file" in missing.value.details
    assert os.listdir(tmp_path) == []  # no temporary file either

    with pytest.raises(NotFound):
        list(client.list("no-such-dir"))
    with pytest.raises(NotFound):
        client.delete("no-such-file")
    with pytest.raises(NotFound):
        client.resume("0" * 32, tmp_path / "no-such-file")

    local = write_random(tmp_path / "f", 10)
    with pytest.raises(FerryError) as traversal:
        client.upload(local, "../escape")
    assert traversal.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(IsADirectoryError):
        client.upload(tmp_path, "dir")
    with pytest.raises(ValueError):
        Client("127.0.0.1:1", chunk_size=5 * MiB)


def test_a_download_that_does_not_match_its_digest_is_not_kept(client, tmp_path, monkeypatch):
    local = write_random(tmp_path / "f", 2 * MiB)
    client.upload(local, "f")
    real = ferry_client._client.FileInfo._from_proto.__func__

    def lying(cls, info):  # the server's FileInfo, with a wrong digest
        parsed = real(cls, info)
        return ferry_client.FileInfo(**{**parsed.__dict__, "sha256": "0" * 64})

    monkeypatch.setattr(ferry_client._client.FileInfo, "_from_proto", classmethod(lying))
    (tmp_path / "out").mkdir()
    with pytest.raises(IntegrityError):
        client.download("f", tmp_path / "out" / "f")
    assert os.listdir(tmp_path / "out") == []


# -- refusals: busy (retried as told) and final (not retried) -------------------


def test_a_busy_refusal_is_retried_as_told_and_a_final_one_is_not(tmp_path):
    server = ServerProcess(tmp_path / "root", "--max-concurrent-uploads", "1", "--quota", str(MiB))
    try:
        with Client(server.address) as client:
            stub = client._stub  # the raw stub: to hold the only upload slot open
            release = threading.Event()

            def held():
                yield ferry_client._proto.UploadRequest(header=ferry_client._proto.UploadHeader(path="held.bin"))
                release.wait(30)
                yield ferry_client._proto.UploadRequest(finish=ferry_client._proto.UploadFinish())

            holding = stub.Upload.future(held())
            # Admitted once its upload is staged (a probe sent earlier could take the slot instead).
            staging = tmp_path / "root" / ".ferry" / "uploads"
            deadline = time.monotonic() + 10
            while not (staging.is_dir() and any(staging.iterdir())):
                assert not holding.done(), f"the held upload ended: {holding.exception()}"
                assert time.monotonic() < deadline, "the held upload was never admitted"
                time.sleep(0.02)
            # Busy: a second upload stream is refused with advice to retry in half a second.
            with pytest.raises(grpc.RpcError) as busy:
                stub.Upload(iter([ferry_client._proto.UploadRequest(
                    header=ferry_client._proto.UploadHeader(path="probe.bin"))]))
            assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, busy.value
            assert ferry_client._client._retry_after(busy.value) == 0.5, busy.value

            # A resumable upload meanwhile waits, retries as told, and lands once the slot frees.
            small = tmp_path / "small.bin"
            small.write_bytes(b"small")
            result = {}
            uploading = threading.Thread(target=lambda: result.update(info=client.upload(small, "small.bin")))
            uploading.start()
            time.sleep(1.0)
            release.set()
            holding.result(timeout=30)
            uploading.join(timeout=30)
            assert result["info"].size == 5

            # Final: a session whose file no longer fits the quota (filled after it
            # was created) is refused at once: a FerryError, not the UploadInterrupted
            # that retrying until the attempts run out would end with.
            part = write_random(tmp_path / "part.bin", 600 * 1024)
            upload_id = client.create_upload(part, "part.bin")
            client.upload(write_random(tmp_path / "filler.bin", 600 * 1024), "filler.bin", resumable=False)
            with pytest.raises(FerryError) as refused:
                client.resume(upload_id, part)
            assert not isinstance(refused.value, ferry_client.UploadInterrupted), refused.value
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "quota" in str(refused.value)
    finally:
        server.stop()


def test_a_download_refused_as_busy_is_retried_once_a_slot_frees(tmp_path):
    server = ServerProcess(tmp_path / "root", "--max-concurrent-downloads", "1")
    try:
        with Client(server.address) as client:
            big = write_random(tmp_path / "big.bin", 32 * MiB)  # more than the HTTP/2 windows
            client.upload(big, "big.bin")
            # Hold the only download slot: opened, its info read, the rest left unread.
            held = client._stub.Download(ferry_client._proto.DownloadRequest(path="big.bin"))
            assert next(held).WhichOneof("kind") == "info"
            result = {}

            def fetch():
                try:
                    result["info"] = client.download("big.bin", tmp_path / "copy.bin")
                except Exception as e:  # reported below
                    result["error"] = e

            fetching = threading.Thread(target=fetch)
            fetching.start()
            time.sleep(1.0)
            held.cancel()
            fetching.join(timeout=60)
            assert "error" not in result, result.get("error")
            assert result["info"].size == 32 * MiB
            assert sha256_of(tmp_path / "copy.bin") == sha256_of(big)
    finally:
        server.stop()


# -- credentials and TLS ----------------------------------------------------------


class ServerProcess:
    """`ferry serve` with extra flags (the `ferry_server` fixture takes none)."""

    def __init__(self, root, *flags):
        self.process = subprocess.Popen(
            [os.environ["FERRY_BIN"], "serve", "--listen", "127.0.0.1:0", "--root", str(root), *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.process.stdout.readline().strip()
        assert line.startswith("listening on "), f"ferry serve printed {line!r}"
        self.address = line.removeprefix("listening on ")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_token_over_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-addext", "basicConstraints=critical,CA:FALSE"],
        check=True, capture_output=True,
    )  # fmt: skip
    token = "py-" + os.urandom(16).hex()
    config = tmp_path / "ferry.toml"
    config.write_text(
        "[[tokens]]\n"
        'name = "pytest"\n'
        f'sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
        'scopes = [{ prefix = "team/", allow = ["read", "write", "list"] }]\n'
    )
    server = ServerProcess(tmp_path / "root", "--config", str(config), "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        local = write_random(tmp_path / "f", 100_000)
        pem = cert.read_bytes()
        with Client(server.address, token=token, root_certificates=pem) as client:
            assert client.upload(local, "team/f").sha256 == sha256_of(local)
            client.download("team/f", tmp_path / "back")
            assert sha256_of(tmp_path / "back") == sha256_of(local)
            with pytest.raises(ferry_client.PermissionDenied) as outside:
                client.upload(local, "other/f")
            assert outside.value.code == grpc.StatusCode.PERMISSION_DENIED
        with Client(server.address, root_certificates=pem) as anonymous:
            with pytest.raises(ferry_client.PermissionDenied) as no_token:
                anonymous.stat("team/f")
            assert no_token.value.code == grpc.StatusCode.UNAUTHENTICATED
        with Client(f"http://{server.address}", token=token) as plain:  # TLS server, plain client
            with pytest.raises(FerryError) as refused:
                plain.stat("team/f")
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()
