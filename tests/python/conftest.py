"""A real `ferry serve` for the Python client tests: the binary named by
FERRY_BIN (scripts/test.sh passes the one cargo just built), on a free
loopback port, over a fresh root."""

import os
import subprocess
from pathlib import Path

import pytest

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"


def compile_protos(out, protos):
    """Generates Python modules (messages and grpc stubs) for `protos`,
    paths relative to proto/, into `out`, as `protoc` would."""
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"  # the well-known types, as grpc_tools' own CLI does
    sources = [str(PROTO_ROOT / proto) for proto in protos]
    status = protoc.main(
        ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *sources]
    )
    assert status == 0, f"protoc failed on {protos}"


@pytest.fixture
def ferry_server(tmp_path):
    binary = os.environ["FERRY_BIN"]
    process = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--root", str(tmp_path / "root")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = process.stdout.readline().strip()
    assert line.startswith("listening on "), f"ferry serve printed {line!r}"
    yield line.removeprefix("listening on ")
    process.terminate()
    process.wait(timeout=30)
