"""The classic services `ferry serve` speaks beside its own API, on the same
port, called by real Python grpcio clients written against their wire
contracts:

- `file_server.FileTransfer` (proto/compat/fileserver.proto): a nameless
  upload named by the `x-ferry-path` request metadata, or stored under
  `received/` and named by the reply's `x-ferry-path` metadata;
- `FileSrv` (proto/compat/file.proto, no package): a header
  (filename + extension) and then chunks;
- `google.bytestream.ByteStream` (proto/google/bytestream/bytestream.proto):
  content-addressed blobs and `files/` paths, resumable writes, ranged reads.

The two tutorial services are driven with 1 KiB and 1 MiB chunks and files of
64 MiB; ByteStream writes a 64 MiB blob in 1 MiB messages, resumes a write
whose stream ended early, and reads back whole and in ranges. Every stored
file is checked on disk under the server's root (tmp_path/"root").

Python stubs are generated from the .proto files at test time (grpcio-tools).
Files are streamed from disk through generators, never held as lists of
messages."""

import hashlib
import os
import sys
import threading
import uuid
from pathlib import Path

import grpc
import pytest
from conftest import compile_protos

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"
TIMEOUT = 60  # seconds, per call (64 MiB through a debug build)

KIB = 1024
MIB = 1024 * KIB
BIG = 64 * MIB  # the "files of >= 64 MiB"
MAX_MESSAGE = 4 * MIB + 64 * KIB
# What a tutorial client sets to send 1 MiB chunks (grpcio's default limit
# is 4 MiB for receiving; ferry's is 4 MiB + 64 KiB).
TUTORIAL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]
# ...and, for the big transfers, accept only uncompressed responses, as
# ferry's own Python client does. grpcio otherwise lists gzip in
# grpc-accept-encoding and the server gzips every response: 64 MiB of random
# bytes then take seconds to download instead of a fraction of one.
# test_a_default_grpcio_channel_downloads_correctly covers that path.
CHANNEL_OPTIONS = TUTORIAL_OPTIONS + [("grpc.compression_enabled_algorithms_bitset", 1)]
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


# --- stubs and data ---------------------------------------------------------


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """The three contracts' modules, generated now: fileserver_pb2(_grpc),
    file_pb2(_grpc) and bytestream_pb2(_grpc)."""
    out = tmp_path_factory.mktemp("compat_stubs")
    compile_protos(out, ["compat/fileserver.proto", "compat/file.proto", "google/bytestream/bytestream.proto"])
    sys.path.insert(0, str(out))
    try:
        # `compat` and `google` are namespace packages: `google.bytestream`
        # sits beside the installed `google.protobuf`.
        from compat import file_pb2, file_pb2_grpc, fileserver_pb2, fileserver_pb2_grpc
        from google.bytestream import bytestream_pb2, bytestream_pb2_grpc
    finally:
        sys.path.remove(str(out))

    class Stubs:
        pass

    stubs = Stubs()
    stubs.fileserver_pb2, stubs.fileserver_pb2_grpc = fileserver_pb2, fileserver_pb2_grpc
    stubs.file_pb2, stubs.file_pb2_grpc = file_pb2, file_pb2_grpc
    stubs.bytestream_pb2, stubs.bytestream_pb2_grpc = bytestream_pb2, bytestream_pb2_grpc
    return stubs


class Data:
    """A file of random bytes on disk, with its size and digest."""

    def __init__(self, path, size):
        self.path = path
        self.size = size
        self.sha256 = file_sha256(path)

    def slice(self, offset, length):
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """64 MiB of random bytes, written once per module."""
    path = tmp_path_factory.mktemp("compat_data") / "big.bin"
    with open(path, "wb") as f:
        for _ in range(BIG // (8 * MIB)):
            f.write(os.urandom(8 * MIB))
    return Data(path, BIG)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """5 MiB + 123 bytes of random bytes (a size that is no multiple of a chunk)."""
    path = tmp_path_factory.mktemp("compat_data") / "small.bin"
    path.write_bytes(os.urandom(5 * MIB + 123))
    return Data(path, 5 * MIB + 123)


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


def read_chunks(path, size, start=0, end=None):
    """The bytes of `path` from `start` to `end`, `size` bytes at a time."""
    with open(path, "rb") as f:
        f.seek(start)
        position = start
        while end is None or position < end:
            want = size if end is None else min(size, end - position)
            block = f.read(want)
            if not block:
                return
            position += len(block)
            yield block


def digest_of(blocks):
    """(size, sha256 hex) of a stream of byte blocks, consumed as it comes."""
    digest, size = hashlib.sha256(), 0
    for block in blocks:
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


@pytest.fixture
def root(tmp_path):
    return tmp_path / "root"


@pytest.fixture
def channel(ferry_server):
    with grpc.insecure_channel(ferry_server, options=CHANNEL_OPTIONS) as channel:
        yield channel


def files_outside_root(tmp_path):
    return {p for p in tmp_path.rglob("*") if not p.is_relative_to(tmp_path / "root")}


CHUNKINGS = [pytest.param(MIB, id="1MiB-chunks"), pytest.param(KIB, id="1KiB-chunks")]


# --- file_server.FileTransfer -----------------------------------------------


@pytest.fixture
def file_transfer(pb, channel):
    return pb.fileserver_pb2_grpc.FileTransferStub(channel)


def send_file(pb, stub, path, chunk, metadata=()):
    """SendFile the file at `path`; returns (reply, its initial metadata as a dict)."""
    requests = (pb.fileserver_pb2.RequestSend(data=block) for block in read_chunks(path, chunk))
    reply, call = stub.SendFile.with_call(requests, metadata=metadata, timeout=TIMEOUT)
    return reply, dict(call.initial_metadata())


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_file_transfer_named_upload_is_stored_and_downloads_identical(pb, file_transfer, root, big, chunk):
    name = "data/big.bin"
    reply, metadata = send_file(pb, file_transfer, big.path, chunk, metadata=[("x-ferry-path", name)])
    assert reply.ok is True
    assert metadata.get("x-ferry-path") == name

    stored = root / name
    assert stored.stat().st_size == big.size
    assert file_sha256(stored) == big.sha256

    replies = file_transfer.DownloadFile(pb.fileserver_pb2.RequestFile(name=name), timeout=TIMEOUT)
    assert digest_of(r.data for r in replies) == (big.size, big.sha256)


def test_file_transfer_unnamed_upload_lands_under_received(pb, file_transfer, root, small):
    reply, metadata = send_file(pb, file_transfer, small.path, MIB)
    assert reply.ok is True
    name = metadata.get("x-ferry-path")
    assert name is not None, f"the reply's initial metadata names no file: {metadata}"
    directory, _, unique = name.partition("/")
    assert directory == "received"
    assert len(unique) == 32 and all(c in "0123456789abcdef" for c in unique.lower()), name
    assert file_sha256(root / name) == small.sha256

    replies = file_transfer.DownloadFile(pb.fileserver_pb2.RequestFile(name=name), timeout=TIMEOUT)
    assert digest_of(r.data for r in replies) == (small.size, small.sha256)

    # A second nameless upload gets a name of its own.
    _, again = send_file(pb, file_transfer, small.path, MIB)
    assert again["x-ferry-path"].startswith("received/") and again["x-ferry-path"] != name


def test_file_transfer_download_of_a_missing_file_is_not_found(pb, file_transfer):
    replies = file_transfer.DownloadFile(pb.fileserver_pb2.RequestFile(name="no/such/file"), timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError) as missing:
        list(replies)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_file_transfer_traversal_path_is_refused(pb, file_transfer, tmp_path, small):
    before = files_outside_root(tmp_path)
    with pytest.raises(grpc.RpcError) as refused:
        send_file(pb, file_transfer, small.path, MIB, metadata=[("x-ferry-path", "../escaped.bin")])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert files_outside_root(tmp_path) == before
    assert not (tmp_path / "escaped.bin").exists()


# --- FileSrv -------------------------------------------------------------------


@pytest.fixture
def file_srv(pb, channel):
    return pb.file_pb2_grpc.FileSrvStub(channel)


def upload_requests(pb, filename, extension, path, chunk):
    yield pb.file_pb2.UploadRequest(header=pb.file_pb2.FileHeader(filename=filename, extension=extension))
    for block in read_chunks(path, chunk):
        yield pb.file_pb2.UploadRequest(chunk_data=block)


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_file_srv_upload_is_stored_as_filename_plus_extension(pb, file_srv, root, big, chunk):
    reply = file_srv.UploadFile(upload_requests(pb, "test", ".dcm", big.path, chunk), timeout=TIMEOUT)
    assert reply.code == 0
    assert "test.dcm" in reply.message

    stored = root / "test.dcm"
    assert stored.stat().st_size == big.size
    assert file_sha256(stored) == big.sha256

    replies = file_srv.DownloadFile(pb.file_pb2.FileHeader(filename="test", extension=".dcm"), timeout=TIMEOUT)
    assert digest_of(r.chunk_data for r in replies) == (big.size, big.sha256)


def test_file_srv_header_filename_may_name_a_directory(pb, file_srv, root, small):
    reply = file_srv.UploadFile(upload_requests(pb, "scans/test", ".dcm", small.path, MIB), timeout=TIMEOUT)
    assert reply.code == 0
    assert file_sha256(root / "scans" / "test.dcm") == small.sha256


def test_file_srv_download_of_a_missing_file_is_invalid_argument(pb, file_srv):
    replies = file_srv.DownloadFile(pb.file_pb2.FileHeader(filename="missing", extension=".dcm"), timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError) as missing:
        list(replies)
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Invalid filepath: missing.dcm" in missing.value.details()


def test_file_srv_chunk_before_header_is_invalid_argument(pb, file_srv, root):
    requests = iter([pb.file_pb2.UploadRequest(chunk_data=b"x" * KIB)])
    with pytest.raises(grpc.RpcError) as refused:
        file_srv.UploadFile(requests, timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not (root / "test.dcm").exists()


def test_file_srv_second_header_is_invalid_argument(pb, file_srv, root):
    header = pb.file_pb2.FileHeader(filename="test", extension=".dcm")
    requests = iter(
        [
            pb.file_pb2.UploadRequest(header=header),
            pb.file_pb2.UploadRequest(chunk_data=b"a" * KIB),
            pb.file_pb2.UploadRequest(header=header),
            pb.file_pb2.UploadRequest(chunk_data=b"b" * KIB),
        ]
    )
    with pytest.raises(grpc.RpcError) as refused:
        file_srv.UploadFile(requests, timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not (root / "test.dcm").exists(), "a refused upload must not be committed"


@pytest.mark.parametrize("filename", ["../x", "../../x", "/x", "a/../../x"])
def test_file_srv_traversal_filename_is_invalid_argument(pb, file_srv, tmp_path, small, filename):
    before = files_outside_root(tmp_path)
    with pytest.raises(grpc.RpcError) as refused:
        file_srv.UploadFile(upload_requests(pb, filename, ".dcm", small.path, MIB), timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert files_outside_root(tmp_path) == before
    for escaped in [tmp_path / "x.dcm", tmp_path.parent / "x.dcm", Path("/x.dcm")]:
        assert not escaped.exists(), escaped


# --- google.bytestream.ByteStream ---------------------------------------------


@pytest.fixture
def bytestream(pb, channel):
    return pb.bytestream_pb2_grpc.ByteStreamStub(channel)


def blob_write_name(sha256, size, instance="main"):
    prefix = f"{instance}/" if instance else ""
    return f"{prefix}uploads/{uuid.uuid4()}/blobs/{sha256}/{size}"


def blob_read_name(sha256, size, instance="main"):
    prefix = f"{instance}/" if instance else ""
    return f"{prefix}blobs/{sha256}/{size}"


def blob_on_disk(root, sha256, instance="main"):
    return root / "cas" / instance / "blobs" / sha256 if instance else root / "cas" / "blobs" / sha256


def write_requests(pb, name, path, chunk, start=0, end=None, finish=True):
    """WriteRequests carrying the bytes of `path` from `start` to `end` at
    their offsets; the resource name on the first only (as the spec allows);
    finish_write on the last when `finish` (an empty last message when there
    is no data)."""
    offset, first = start, True
    blocks = read_chunks(path, chunk, start, end)
    block = next(blocks, None)
    while block is not None:
        following = next(blocks, None)
        last = following is None
        yield pb.bytestream_pb2.WriteRequest(
            resource_name=name if first else "",
            write_offset=offset,
            data=block,
            finish_write=finish and last,
        )
        offset += len(block)
        first = False
        block = following
    if first and finish:
        yield pb.bytestream_pb2.WriteRequest(resource_name=name, write_offset=offset, finish_write=True)


def read_blocks(pb, stub, name, offset=0, limit=0):
    replies = stub.Read(
        pb.bytestream_pb2.ReadRequest(resource_name=name, read_offset=offset, read_limit=limit), timeout=TIMEOUT
    )
    return (r.data for r in replies)


def query(pb, stub, name):
    return stub.QueryWriteStatus(pb.bytestream_pb2.QueryWriteStatusRequest(resource_name=name), timeout=TIMEOUT)


def test_bytestream_cas_write_read_and_rewrite_of_a_big_blob(pb, bytestream, root, big):
    name = blob_write_name(big.sha256, big.size)
    reply = bytestream.Write(write_requests(pb, name, big.path, MIB), timeout=TIMEOUT)
    assert reply.committed_size == big.size

    stored = blob_on_disk(root, big.sha256)
    assert stored.stat().st_size == big.size
    assert file_sha256(stored) == big.sha256

    status = query(pb, bytestream, name)
    assert (status.committed_size, status.complete) == (big.size, True)

    # Whole, then a range that starts and ends inside chunks.
    read_name = blob_read_name(big.sha256, big.size)
    assert digest_of(read_blocks(pb, bytestream, read_name)) == (big.size, big.sha256)
    offset, limit = 3 * MIB + 123, 5 * MIB + 7
    assert b"".join(read_blocks(pb, bytestream, read_name, offset, limit)) == big.slice(offset, limit)
    # A limit past the end reads to the end.
    tail = big.size - 1000
    assert b"".join(read_blocks(pb, bytestream, read_name, tail, 10 * MIB)) == big.slice(tail, 1000)

    # A blob that is stored already: the reply comes at once, while the
    # client is still sending (its stream is held open, never half-closed).
    release = threading.Event()

    def held_open():
        yield pb.bytestream_pb2.WriteRequest(
            resource_name=blob_write_name(big.sha256, big.size), write_offset=0, data=big.slice(0, MIB)
        )
        release.wait(TIMEOUT)

    future = bytestream.Write.future(held_open(), timeout=TIMEOUT)
    try:
        assert future.result(timeout=10).committed_size == big.size
    finally:
        release.set()


def test_bytestream_resumes_a_write_whose_stream_ended_without_finish_write(pb, bytestream, root, small):
    name = blob_write_name(small.sha256, small.size)
    sent = 2 * MIB + 5
    with pytest.raises(grpc.RpcError) as unfinished:
        bytestream.Write(write_requests(pb, name, small.path, MIB, 0, sent, finish=False), timeout=TIMEOUT)
    assert unfinished.value.code() == grpc.StatusCode.ABORTED, unfinished.value
    # ferry's ABORTED carries the committed offset (a convenience beyond the spec).
    trailer = dict(unfinished.value.trailing_metadata() or ()).get("ferry-committed-offset")

    status = query(pb, bytestream, name)
    assert status.complete is False
    assert 0 < status.committed_size <= sent
    assert trailer is not None and int(trailer) == status.committed_size
    assert not blob_on_disk(root, small.sha256).exists(), "an unfinished write must not be visible"
    with pytest.raises(grpc.RpcError) as unreadable:
        list(read_blocks(pb, bytestream, blob_read_name(small.sha256, small.size)))
    assert unreadable.value.code() == grpc.StatusCode.NOT_FOUND

    # Past the committed size is refused; the session survives that.
    with pytest.raises(grpc.RpcError) as too_far:
        bytestream.Write(
            write_requests(pb, name, small.path, MIB, status.committed_size + 1), timeout=TIMEOUT
        )
    assert too_far.value.code() == grpc.StatusCode.OUT_OF_RANGE

    committed = query(pb, bytestream, name).committed_size
    assert committed == status.committed_size
    reply = bytestream.Write(write_requests(pb, name, small.path, MIB, committed), timeout=TIMEOUT)
    assert reply.committed_size == small.size

    assert file_sha256(blob_on_disk(root, small.sha256)) == small.sha256
    status = query(pb, bytestream, name)
    assert (status.committed_size, status.complete) == (small.size, True)
    assert digest_of(read_blocks(pb, bytestream, blob_read_name(small.sha256, small.size))) == (
        small.size,
        small.sha256,
    )


def test_bytestream_resume_may_resend_bytes_already_committed(pb, bytestream, root, small):
    name = blob_write_name(small.sha256, small.size, instance="")
    with pytest.raises(grpc.RpcError) as unfinished:
        bytestream.Write(write_requests(pb, name, small.path, MIB, 0, 3 * MIB, finish=False), timeout=TIMEOUT)
    assert unfinished.value.code() == grpc.StatusCode.ABORTED
    assert query(pb, bytestream, name).committed_size > 0
    # From the start again: what is committed already is skipped.
    reply = bytestream.Write(write_requests(pb, name, small.path, MIB), timeout=TIMEOUT)
    assert reply.committed_size == small.size
    assert file_sha256(blob_on_disk(root, small.sha256, instance="")) == small.sha256


def test_bytestream_digest_mismatch_is_invalid_argument_and_stores_nothing(pb, bytestream, root, small):
    wrong = hashlib.sha256(b"not these bytes").hexdigest()
    name = blob_write_name(wrong, small.size)
    with pytest.raises(grpc.RpcError) as mismatch:
        bytestream.Write(write_requests(pb, name, small.path, MIB), timeout=TIMEOUT)
    assert mismatch.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not blob_on_disk(root, wrong).exists()
    assert not blob_on_disk(root, small.sha256).exists()
    with pytest.raises(grpc.RpcError) as missing:
        list(read_blocks(pb, bytestream, blob_read_name(wrong, small.size)))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_bytestream_size_mismatch_is_invalid_argument(pb, bytestream, root, small):
    name = blob_write_name(small.sha256, small.size + 1)
    with pytest.raises(grpc.RpcError) as mismatch:
        bytestream.Write(write_requests(pb, name, small.path, MIB), timeout=TIMEOUT)
    assert mismatch.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not blob_on_disk(root, small.sha256).exists()


def test_bytestream_files_form_write_and_read(pb, bytestream, root, small):
    name = f"uploads/{uuid.uuid4()}/files/models/a.bin"
    reply = bytestream.Write(write_requests(pb, name, small.path, MIB), timeout=TIMEOUT)
    assert reply.committed_size == small.size
    assert file_sha256(root / "models" / "a.bin") == small.sha256
    status = query(pb, bytestream, name)
    assert (status.committed_size, status.complete) == (small.size, True)

    assert digest_of(read_blocks(pb, bytestream, "files/models/a.bin")) == (small.size, small.sha256)
    assert b"".join(read_blocks(pb, bytestream, "files/models/a.bin", 100, 50)) == small.slice(100, 50)


def test_bytestream_negative_or_past_the_end_read_offsets_are_out_of_range(pb, bytestream, small):
    bytestream.Write(
        write_requests(pb, f"uploads/{uuid.uuid4()}/files/a.bin", small.path, MIB), timeout=TIMEOUT
    )
    for offset, limit in [(-1, 0), (0, -1), (small.size + 1, 0)]:
        with pytest.raises(grpc.RpcError) as refused:
            list(read_blocks(pb, bytestream, "files/a.bin", offset, limit))
        assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE, (offset, limit)
    with pytest.raises(grpc.RpcError) as refused:
        list(read_blocks(pb, bytestream, blob_read_name(EMPTY_SHA256, 0), -1))
    assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE


@pytest.mark.parametrize("instance", ["", "main", "a/b"])
def test_bytestream_empty_blob_is_always_readable(pb, bytestream, instance):
    replies = bytestream.Read(
        pb.bytestream_pb2.ReadRequest(resource_name=blob_read_name(EMPTY_SHA256, 0, instance)), timeout=TIMEOUT
    )
    assert [r.data for r in replies if r.data] == []
    assert replies.code() == grpc.StatusCode.OK


def test_bytestream_query_of_an_unknown_write_is_not_found(pb, bytestream):
    with pytest.raises(grpc.RpcError) as unknown:
        query(pb, bytestream, blob_write_name(hashlib.sha256(b"never written").hexdigest(), 13))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_three_services_share_the_port(pb, channel):
    """Their full names on the wire: file.proto has no package."""
    assert pb.fileserver_pb2.DESCRIPTOR.services_by_name["FileTransfer"].full_name == "file_server.FileTransfer"
    assert pb.file_pb2.DESCRIPTOR.services_by_name["FileSrv"].full_name == "FileSrv"
    assert pb.bytestream_pb2.DESCRIPTOR.services_by_name["ByteStream"].full_name == "google.bytestream.ByteStream"
    for method in ["/file_server.FileTransfer/DownloadFile", "/FileSrv/DownloadFile"]:
        call = channel.unary_stream(method, request_serializer=lambda _: b"", response_deserializer=bytes)
        with pytest.raises(grpc.RpcError) as answered:
            list(call(None, timeout=TIMEOUT))
        # An empty name: refused by the service, not UNIMPLEMENTED by the router.
        assert answered.value.code() != grpc.StatusCode.UNIMPLEMENTED, method


def test_a_default_grpcio_channel_downloads_correctly(pb, ferry_server, small):
    """A tutorial client's channel: only the message limits set, so grpcio
    offers gzip for responses. Every download still arrives intact."""
    with grpc.insecure_channel(ferry_server, options=TUTORIAL_OPTIONS) as channel:
        file_transfer = pb.fileserver_pb2_grpc.FileTransferStub(channel)
        reply, _ = send_file(pb, file_transfer, small.path, MIB, metadata=[("x-ferry-path", "a.bin")])
        assert reply.ok is True
        replies = file_transfer.DownloadFile(pb.fileserver_pb2.RequestFile(name="a.bin"), timeout=TIMEOUT)
        assert digest_of(r.data for r in replies) == (small.size, small.sha256)

        file_srv = pb.file_pb2_grpc.FileSrvStub(channel)
        replies = file_srv.DownloadFile(pb.file_pb2.FileHeader(filename="a", extension=".bin"), timeout=TIMEOUT)
        assert digest_of(r.chunk_data for r in replies) == (small.size, small.sha256)

        bytestream = pb.bytestream_pb2_grpc.ByteStreamStub(channel)
        assert digest_of(read_blocks(pb, bytestream, "files/a.bin")) == (small.size, small.sha256)
