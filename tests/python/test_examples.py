"""The Rust tutorial examples (crates/examples) against real Python grpcio code
written against the tutorials' contracts, proto/tutorial/demo.proto and
proto/tutorial/helloworld.proto, in both directions:

- a grpcio client calls the `grpc_demo` and `greeter` example servers in every
  call mode, and stops them with SIGTERM (they must exit 0);
- the `grpc_demo_client` and `greeter_client` examples call grpcio servers
  written like the tutorials' Python servers.

Python stubs are generated from the .proto files at test time (grpcio-tools).
FERRY_EXAMPLES_DIR names the directory of the built example binaries
(target/debug/examples after `cargo build -p ferry-examples --examples`)."""

import os
import queue
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from conftest import compile_protos

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"
TIMEOUT = 10  # seconds, per call


def example_binary(name):
    directory = os.environ.get("FERRY_EXAMPLES_DIR")
    if not directory:
        pytest.fail("FERRY_EXAMPLES_DIR is not set: build with `cargo build -p ferry-examples --examples` "
                    "and point it at target/debug/examples")
    path = Path(directory) / name
    assert path.is_file(), f"{path} does not exist: build it with `cargo build -p ferry-examples --examples`"
    return str(path)


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """demo_pb2, demo_pb2_grpc, helloworld_pb2, helloworld_pb2_grpc, generated now from proto/tutorial."""
    out = tmp_path_factory.mktemp("tutorial_stubs")
    compile_protos(out, ["tutorial/demo.proto", "tutorial/helloworld.proto"])
    sys.path.insert(0, str(out))
    try:
        from tutorial import demo_pb2, demo_pb2_grpc, helloworld_pb2, helloworld_pb2_grpc
    finally:
        sys.path.remove(str(out))

    class Stubs:
        pass

    stubs = Stubs()
    stubs.demo_pb2, stubs.demo_pb2_grpc = demo_pb2, demo_pb2_grpc
    stubs.helloworld_pb2, stubs.helloworld_pb2_grpc = helloworld_pb2, helloworld_pb2_grpc
    return stubs


def start_example(name):
    process = subprocess.Popen(
        [example_binary(name), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = process.stdout.readline().strip()
    assert line.startswith("listening on "), f"{name} printed {line!r}"
    return process, line.removeprefix("listening on ")


def stop_example(process):
    process.terminate()  # SIGTERM: a graceful stop
    assert process.wait(timeout=30) == 0, "the example server did not exit cleanly on SIGTERM"


@pytest.fixture(scope="module")
def demo_server():
    process, address = start_example("grpc_demo")
    yield address
    stop_example(process)


@pytest.fixture(scope="module")
def greeter_server():
    process, address = start_example("greeter")
    yield address
    stop_example(process)


@pytest.fixture
def demo(pb, demo_server):
    with grpc.insecure_channel(demo_server) as channel:
        yield pb.demo_pb2_grpc.GRPCDemoStub(channel)


@pytest.fixture
def greeter(pb, greeter_server):
    with grpc.insecure_channel(greeter_server) as channel:
        yield pb.helloworld_pb2_grpc.GreeterStub(channel)


def lockstep(first):
    """A request iterator for a bidirectional call that yields a request only
    when the test puts one in: the test sends the next request only after the
    reply to the previous one arrived, so the call completes only if the server
    answers while the request stream is still open. None ends the stream."""
    outbox = queue.Queue()
    outbox.put(first)

    def requests():
        while (item := outbox.get(timeout=TIMEOUT)) is not None:
            yield item

    return requests(), outbox.put


# --- The contracts themselves: names, modes and field numbers are the wire. ---


def test_the_protos_are_the_tutorials_contracts(pb):
    demo = pb.demo_pb2.DESCRIPTOR
    assert demo.package == "demo"
    service = demo.services_by_name["GRPCDemo"]
    modes = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert modes == {
        "SimpleMethod": (False, False),
        "ClientStreamingMethod": (True, False),
        "ServerStreamingMethod": (False, True),
        "BidirectionalStreamingMethod": (True, True),
    }
    for method in service.methods:
        assert (method.input_type.full_name, method.output_type.full_name) == ("demo.Request", "demo.Response")
    fields = lambda message: {f.name: (f.number, f.type) for f in message.fields}  # noqa: E731
    int64, string = 3, 9  # FieldDescriptor.TYPE_INT64, TYPE_STRING
    assert fields(demo.message_types_by_name["Request"]) == {"client_id": (1, int64), "request_data": (2, string)}
    assert fields(demo.message_types_by_name["Response"]) == {"server_id": (1, int64), "response_data": (2, string)}

    hello = pb.helloworld_pb2.DESCRIPTOR
    assert hello.package == "helloworld"
    service = hello.services_by_name["Greeter"]
    modes = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert modes == {
        "SayHello": (False, False),
        "SayHelloStreamReply": (False, True),
        "SayHelloBidiStream": (True, True),
    }
    for method in service.methods:
        assert (method.input_type.full_name, method.output_type.full_name) == (
            "helloworld.HelloRequest",
            "helloworld.HelloReply",
        )
    assert fields(hello.message_types_by_name["HelloRequest"]) == {"name": (1, string)}
    assert fields(hello.message_types_by_name["HelloReply"]) == {"message": (1, string)}


# --- A grpcio client against the Rust example servers. ---


def test_demo_unary(pb, demo):
    response = demo.SimpleMethod(pb.demo_pb2.Request(client_id=42, request_data="called by Python"), timeout=TIMEOUT)
    assert response.server_id == 1
    assert response.response_data == 'SimpleMethod received "called by Python" from client 42'


def test_demo_client_streaming_summarises_every_request(pb, demo):
    requests = [pb.demo_pb2.Request(client_id=42, request_data=f"message {i}") for i in range(5)]
    response = demo.ClientStreamingMethod(iter(requests), timeout=TIMEOUT)
    assert response.server_id == 1
    received = ", ".join(f'"message {i}" from client 42' for i in range(5))
    assert response.response_data == f"ClientStreamingMethod received 5 requests: [{received}]"


def test_demo_server_streaming_sends_several_responses(pb, demo):
    request = pb.demo_pb2.Request(client_id=42, request_data="stream please")
    responses = list(demo.ServerStreamingMethod(request, timeout=TIMEOUT))
    assert len(responses) == 5
    assert {r.server_id for r in responses} == {1}
    assert [r.response_data for r in responses] == [
        f'ServerStreamingMethod response {n} of 5 to "stream please" from client 42' for n in range(1, 6)
    ]


def test_demo_bidirectional_echoes_each_request_as_it_arrives(pb, demo):
    data = ["first", "second", "third"]
    request = lambda text: pb.demo_pb2.Request(client_id=42, request_data=text)  # noqa: E731
    requests, put = lockstep(request(data[0]))
    responses = demo.BidirectionalStreamingMethod(requests, timeout=TIMEOUT)
    for i, text in enumerate(data):
        echo = next(responses)  # before the next request is even queued
        assert echo.server_id == 1
        assert echo.response_data == f'BidirectionalStreamingMethod echo of "{text}" from client 42'
        put(request(data[i + 1]) if i + 1 < len(data) else None)
    assert list(responses) == []
    assert responses.code() == grpc.StatusCode.OK


def test_greeter_say_hello(pb, greeter):
    reply = greeter.SayHello(pb.helloworld_pb2.HelloRequest(name="Python"), timeout=TIMEOUT)
    assert reply.message == "Hello, Python!"


def test_greeter_say_hello_stream_reply(pb, greeter):
    replies = list(greeter.SayHelloStreamReply(pb.helloworld_pb2.HelloRequest(name="Python"), timeout=TIMEOUT))
    assert [r.message for r in replies] == [f"Hello, Python! (greeting {n} of 3)" for n in range(1, 4)]


def test_greeter_say_hello_bidi_stream_answers_each_name(pb, greeter):
    names = ["Ann", "Bob", "Cy"]
    hello = pb.helloworld_pb2.HelloRequest
    requests, put = lockstep(hello(name=names[0]))
    replies = greeter.SayHelloBidiStream(requests, timeout=TIMEOUT)
    for i, name in enumerate(names):
        assert next(replies).message == f"Hello, {name}!"
        put(hello(name=names[i + 1]) if i + 1 < len(names) else None)
    assert list(replies) == []
    assert replies.code() == grpc.StatusCode.OK


# --- The Rust example clients against grpcio servers written like the tutorials'. ---


@pytest.fixture
def python_server():
    servers = []

    def start(add_servicer):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        add_servicer(server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(grace=None)


def run_client(name, *args):
    done = subprocess.run([example_binary(name), *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_rust_demo_client_against_a_python_server(pb, python_server):
    Response = pb.demo_pb2.Response
    received = []

    class DemoServicer(pb.demo_pb2_grpc.GRPCDemoServicer):
        def SimpleMethod(self, request, context):
            received.append(("unary", request.client_id, request.request_data))
            return Response(server_id=7, response_data="Python server SimpleMethod ok")

        def ClientStreamingMethod(self, request_iterator, context):
            data = [r.request_data for r in request_iterator]
            received.append(("client streaming", len(data)))
            return Response(server_id=7, response_data=f"Python server got {len(data)}")

        def ServerStreamingMethod(self, request, context):
            received.append(("server streaming", request.client_id))
            for i in range(3):
                yield Response(server_id=7, response_data=f"Python server message {i}")

        def BidirectionalStreamingMethod(self, request_iterator, context):
            for request in request_iterator:
                yield Response(server_id=7, response_data=f"Python echo {request.request_data}")

    url = python_server(lambda s: pb.demo_pb2_grpc.add_GRPCDemoServicer_to_server(DemoServicer(), s))
    out = run_client("grpc_demo_client", "--server", url)
    assert "server 7: Python server SimpleMethod ok" in out
    assert "server 7: Python server got 5" in out
    for i in range(3):
        assert f"server 7: Python server message {i}" in out
    assert "(3 responses)" in out
    for i in range(1, 6):
        assert f'sent "message {i}" -> server 7: Python echo message {i}' in out
    assert received[0] == ("unary", 1, "called by the Rust client")
    assert received[1:] == [("client streaming", 5), ("server streaming", 1)]


def test_rust_greeter_client_against_a_python_server(pb, python_server):
    HelloReply = pb.helloworld_pb2.HelloReply

    class GreeterServicer(pb.helloworld_pb2_grpc.GreeterServicer):
        def SayHello(self, request, context):
            return HelloReply(message=f"Hello from Python, {request.name}!")

        def SayHelloStreamReply(self, request, context):
            for i in range(2):
                yield HelloReply(message=f"Streamed hello {i}, {request.name}!")

        def SayHelloBidiStream(self, request_iterator, context):
            for request in request_iterator:
                yield HelloReply(message=f"Bidi hello, {request.name}!")

    url = python_server(lambda s: pb.helloworld_pb2_grpc.add_GreeterServicer_to_server(GreeterServicer(), s))
    out = run_client("greeter_client", "--server", url, "--name", "Tester")
    assert "Hello from Python, Tester!" in out
    assert "Streamed hello 0, Tester!" in out and "Streamed hello 1, Tester!" in out
    for name in ["Tester", "gRPC", "ferry"]:
        assert f'sent "{name}" -> Bidi hello, {name}!' in out
