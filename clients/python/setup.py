"""Build hook: compile the package's copy of ferry.proto into a descriptor set.

The wheel carries `ferry_client/_ferry_v1.binpb` (a FileDescriptorSet of
ferry/v1/ferry.proto and google/protobuf/timestamp.proto), from which
`ferry_client._proto` builds the message classes and the service stub at
import time. Shipping a descriptor instead of generated `_pb2` modules keeps
the package free of protobuf "gencode" version checks: it works with any
protobuf runtime from 5.26 to 7.x, whatever grpcio-tools compiled it.

Metadata lives in pyproject.toml; this file only adds the compile step.
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "src", "ferry_client", "proto")
PROTO = "ferry/v1/ferry.proto"
DESCRIPTOR_SET = "_ferry_v1.binpb"


def compile_descriptor_set(out_path):
    import grpc_tools
    from grpc_tools import protoc

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = [
        "protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        "--include_imports",
        f"--descriptor_set_out={out_path}",
        PROTO,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed to compile {PROTO}")


class BuildPyWithDescriptor(build_py):
    def run(self):
        editable = getattr(self, "editable_mode", False)
        if not editable:
            # pip builds in place: drop what an earlier build left in build/,
            # so a module removed from src/ cannot linger in the wheel.
            shutil.rmtree(os.path.join(self.build_lib, "ferry_client"), ignore_errors=True)
        super().run()
        # Editable installs import from src/: then put it there.
        target = os.path.join(HERE, "src", "ferry_client") if editable else os.path.join(self.build_lib, "ferry_client")
        os.makedirs(target, exist_ok=True)
        compile_descriptor_set(os.path.join(target, DESCRIPTOR_SET))

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        return [*outputs, os.path.join(self.build_lib, "ferry_client", DESCRIPTOR_SET)]


setup(cmdclass={"build_py": BuildPyWithDescriptor})
