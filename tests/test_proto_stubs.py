"""The committed gRPC stubs are what `make proto` generates from the .proto file."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_committed_stubs_match_the_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(ROOT / "proto/alignd/v1/alignd.proto")],
        check=True,
    )
    for name in ("alignd_pb2.py", "alignd_pb2.pyi", "alignd_pb2_grpc.py"):
        fresh = (tmp_path / "alignd/v1" / name).read_text()
        committed = (ROOT / "alignd/v1" / name).read_text()
        assert fresh == committed, f"alignd/v1/{name} is stale: run `make proto`"
