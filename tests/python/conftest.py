"""A real `ferry serve` for the Python client tests: the binary named by
FERRY_BIN (scripts/test.sh passes the one cargo just built), on a free
loopback port, over a fresh root."""

import os
import subprocess

import pytest


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
