"""The ferry.v1 messages and the `Ferry` service stub, built at import time
from the descriptor set that setup.py compiled from this package's copy of
ferry.proto (`proto/ferry/v1/ferry.proto`, kept identical to the repository's
by a test).

The descriptors go into a private pool, so this package never clashes with
generated `ferry_pb2` modules a program may also import. The stub is derived
from the service descriptor (method names, streaming kinds, message types), so
it cannot drift from the proto either.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

DESCRIPTOR_SET = "_ferry_v1.binpb"
PROTO_RESOURCE = "proto/ferry/v1/ferry.proto"
SERVICE = "ferry.v1.Ferry"


def _load_pool() -> descriptor_pool.DescriptorPool:
    try:
        data = resources.files(__package__).joinpath(DESCRIPTOR_SET).read_bytes()
    except FileNotFoundError as e:  # running from a source tree that was never built
        raise ImportError(
            f"ferry_client: {DESCRIPTOR_SET} is missing; install the package (pip install clients/python) "
            "so that its build step compiles ferry.proto"
        ) from e
    pool = descriptor_pool.DescriptorPool()
    # The set lists dependencies first (timestamp.proto, then ferry.proto).
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.AddSerializedFile(file.SerializeToString())
    return pool


POOL = _load_pool()


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"ferry.v1.{name}"))


UploadHeader = _message("UploadHeader")
Chunk = _message("Chunk")
UploadFinish = _message("UploadFinish")
UploadRequest = _message("UploadRequest")
FileInfo = _message("FileInfo")
DownloadRequest = _message("DownloadRequest")
StatRequest = _message("StatRequest")
ListRequest = _message("ListRequest")
DeleteRequest = _message("DeleteRequest")
CreateUploadRequest = _message("CreateUploadRequest")
QueryUploadRequest = _message("QueryUploadRequest")
AbortUploadRequest = _message("AbortUploadRequest")
UploadSessionStart = _message("UploadSessionStart")
UploadSessionRequest = _message("UploadSessionRequest")
Timestamp = message_factory.GetMessageClass(POOL.FindMessageTypeByName("google.protobuf.Timestamp"))

_WRITE_MODE = POOL.FindEnumTypeByName("ferry.v1.WriteMode")
WRITE_MODE_OVERWRITE: int = _WRITE_MODE.values_by_name["WRITE_MODE_OVERWRITE"].number
WRITE_MODE_CREATE_ONLY: int = _WRITE_MODE.values_by_name["WRITE_MODE_CREATE_ONLY"].number

_ENTRY_KIND = POOL.FindEnumTypeByName("ferry.v1.EntryKind")
ENTRY_KIND_FILE: int = _ENTRY_KIND.values_by_name["ENTRY_KIND_FILE"].number
ENTRY_KIND_DIRECTORY: int = _ENTRY_KIND.values_by_name["ENTRY_KIND_DIRECTORY"].number


class FerryStub:
    """One multi-callable per method of `ferry.v1.Ferry`, as an attribute
    named after the method (`stub.Upload`, `stub.UploadSession`, ...)."""

    def __init__(self, channel: grpc.Channel) -> None:
        service = POOL.FindServiceByName(SERVICE)
        for method in service.methods:
            request = message_factory.GetMessageClass(method.input_type)
            response = message_factory.GetMessageClass(method.output_type)
            factory = {
                (False, False): channel.unary_unary,
                (False, True): channel.unary_stream,
                (True, False): channel.stream_unary,
                (True, True): channel.stream_stream,
            }[(method.client_streaming, method.server_streaming)]
            callable_ = factory(
                f"/{service.full_name}/{method.name}",
                request_serializer=request.SerializeToString,
                response_deserializer=response.FromString,
            )
            setattr(self, method.name, callable_)

    def __getattr__(self, name: str) -> Any:  # for type checkers: methods are set dynamically
        raise AttributeError(f"ferry.v1.Ferry has no method {name!r}")
