"""The committed gRPC stubs are what `make proto` generates from the .proto file."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_committed_stubs_match_the_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(ROOT / "proto/alignd/v1/alignd.proto"),
        ],
        check=True,
    )
    for name in ("alignd_pb2.py", "alignd_pb2.pyi", "alignd_pb2_grpc.py"):
        fresh = (tmp_path / "alignd/v1" / name).read_text()
        committed = (ROOT / "alignd/v1" / name).read_text()
        assert fresh == committed, f"alignd/v1/{name} is stale: run `make proto`"


# Proto field types that carry each params-dataclass type.
_PROTO_TYPES = {
    "int": "TYPE_INT32",
    "float": "TYPE_DOUBLE",
    "bool": "TYPE_BOOL",
    "str": "TYPE_STRING",
    "list[str]": "TYPE_STRING",
    "map[str,float]": "TYPE_MESSAGE",
}


def test_every_strategy_parameter_has_its_proto_field():
    import dataclasses

    from google.protobuf.descriptor import FieldDescriptor

    from alignd.decoding import STRATEGIES
    from alignd.decoding.params import type_name
    from alignd.v1 import alignd_pb2 as pb

    oneof = {f.name: f.message_type for f in pb.GenerateRequest.DESCRIPTOR.oneofs_by_name["params"].fields}
    assert set(oneof) == set(STRATEGIES)
    type_names = {v: k for k, v in vars(FieldDescriptor).items() if k.startswith("TYPE_")}
    for name, strategy in STRATEGIES.items():
        message = oneof[name]
        fields = {f.name: type_name(f) for f in dataclasses.fields(strategy.Params)}
        assert set(message.fields_by_name) == set(fields), name
        for field, kind in fields.items():
            assert type_names[message.fields_by_name[field].type] == _PROTO_TYPES[kind], f"{name}.{field}"
