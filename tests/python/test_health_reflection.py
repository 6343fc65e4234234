"""grpc.health.v1 and server reflection (v1alpha and v1), queried by the
official Python grpcio clients, as grpcurl-style tools and load balancers do."""

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

SERVING = health_pb2.HealthCheckResponse.SERVING


def test_health_reports_serving_for_the_server_and_ferry(ferry_server):
    with grpc.insecure_channel(ferry_server) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service="ferry.v1.Ferry")).status == SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_v1alpha_lists_services_and_resolves_the_whole_api(ferry_server):
    with grpc.insecure_channel(ferry_server) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request])))
        services = {s.name for s in reply.list_services_response.service}
        assert {"ferry.v1.Ferry", "grpc.health.v1.Health"} <= services

        # What a dynamic client does: resolve the service and every message,
        # following imports (FileInfo.mtime is a google.protobuf.Timestamp).
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        ferry = pool.FindServiceByName("ferry.v1.Ferry")
        methods = {m.name for m in ferry.methods}
        assert {"Upload", "Download", "Stat", "List", "Delete", "CreateUpload", "UploadSession"} <= methods
        file_info = pool.FindMessageTypeByName("ferry.v1.FileInfo")
        assert file_info.fields_by_name["mtime"].message_type.full_name == "google.protobuf.Timestamp"


def test_reflection_v1_answers_too(ferry_server):
    # v1 and v1alpha messages are identical on the wire; grpcio-reflection
    # ships only the v1alpha stubs, so call v1's method with them.
    with grpc.insecure_channel(ferry_server) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="ferry.v1.Ferry")
        (reply,) = list(call(iter([request])))
        files = [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in reply.file_descriptor_response.file_descriptor_proto]
        assert "ferry/v1/ferry.proto" in {f.name for f in files}
