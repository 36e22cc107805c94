"""Generated requests for every alignd RPC (hypothesis), and a driver that sends them.

Messages are built from the proto's descriptors: any subset of fields, strings that are mostly
names the server knows (strategies, objectives, experiments, roles) but also empty, huge, or odd
unicode, numbers from the useful range to the extremes (NaN, infinities, the type's limits),
oversized repeated fields and maps, unknown experiments and request ids. Each call also picks
its credentials: none, garbage, or one of the server's keys. The server must answer every one
with a status of its own (never INTERNAL or UNKNOWN) and stay healthy.
`tests/server/test_fuzz.py` sends 500 in `make test`; `benchmarks/fuzz.py` 10,000 to SmolLM2.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from alignd.v1 import alignd_pb2 as pb
from alignd.v1 import alignd_pb2_grpc as pb_grpc

# RPC -> (request message, streams its answer)
METHODS: dict[str, tuple[type, bool]] = {
    "Generate": (pb.GenerateRequest, False),
    "GenerateStream": (pb.GenerateRequest, True),
    "Score": (pb.ScoreRequest, False),
    "RecordFeedback": (pb.FeedbackRequest, False),
    "GetExperimentReport": (pb.ExperimentReportRequest, False),
    "ListExperiments": (pb.ListExperimentsRequest, False),
    "CreateExperiment": (pb.Experiment, False),
    "GetServerInfo": (pb.GetServerInfoRequest, False),
}
# Weighted toward the RPCs with the most to check.
METHOD_WEIGHTS = {"Generate": 5, "GenerateStream": 3, "Score": 3, "RecordFeedback": 2, "CreateExperiment": 2}
NAMES = [
    "sample",
    "best_of_n",
    "controlled",
    "multi_objective",
    "robust",
    "linear_alignment",
    "evolutionary",
    "soft_best_of_n",
    "speculative_best_of_n",
    "user",
    "assistant",
    "system",
    "prefix",
    "heads",
    "auto",
    "tokenwise",
    "blockwise",
    "logit_fusion",
    "base",
    "fuzz-ab",
    "control",
    "treatment",
    "nope",
]
INT_LIMITS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
}
ODD_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)),  # protobuf strings are valid UTF-8
    max_size=40,
)


def texts(names: Sequence[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(list(names)),
        st.just(""),
        ODD_TEXT,
        st.sampled_from(["\x00", "\u202e\u0000evil", "😀" * 50, "a" * 300, "\ufeff"]),
        st.integers(1000, 40_000).map(lambda n: "word " * (n // 5)),  # oversized
        st.text(alphabet="0123456789abcdef", min_size=8, max_size=32),  # id-like
    )


def numbers(kind: int) -> st.SearchStrategy[Any]:
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        width = 32 if kind == FieldDescriptor.TYPE_FLOAT else 64
        return st.one_of(
            st.floats(0, 2),
            st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-300, 1e300]),
            st.floats(allow_nan=True, allow_infinity=True, width=width),
        )
    low, high = INT_LIMITS[kind]
    return st.one_of(
        st.integers(max(low, -2), 12), st.sampled_from([low, high, 0, 1, 64, 65, 1024]), st.integers(low, high)
    )


def value(f: FieldDescriptor, names: Sequence[str], depth: int) -> st.SearchStrategy[Any]:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return message(f.message_type, names, depth + 1)
    if f.type == FieldDescriptor.TYPE_STRING:
        return texts(names)
    if f.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if f.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if f.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 8)
    return numbers(f.type)


def message(descriptor: Descriptor, names: Sequence[str], depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Any subset of the message's fields, as keyword arguments of its constructor."""
    if depth > 3:
        return st.just({})
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in descriptor.fields:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            key = value(f.message_type.fields_by_name["key"], names, depth)
            item = value(f.message_type.fields_by_name["value"], names, depth)
            optional[f.name] = st.one_of(
                st.dictionaries(key, item, max_size=4), st.dictionaries(key, item, min_size=50, max_size=300)
            )
        elif f.is_repeated:
            one = value(f, names, depth)
            optional[f.name] = st.one_of(st.lists(one, max_size=4), st.lists(one, min_size=50, max_size=300))
        else:
            optional[f.name] = value(f, names, depth)
    return st.fixed_dictionaries({}, optional=optional)


def plausible_generate(names: Sequence[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A request near the valid ones (a prompt, a known strategy, small sampling), with random
    extras: most of these decode, so decoding paths get fuzzed too, not only validation."""
    sampling = st.fixed_dictionaries(
        {"max_tokens": st.integers(1, 6)},
        optional={"temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "seed": st.integers(0, 2**32)},
    )
    return st.fixed_dictionaries(
        {"prompt": ODD_TEXT.filter(str.strip), "sampling": sampling},
        optional={
            "strategy": st.sampled_from(list(names)),
            "weights": st.dictionaries(st.sampled_from(list(names)), st.floats(0, 1), max_size=3),
            "preference_vectors": st.dictionaries(st.sampled_from(list(names)), st.floats(-3, 3), max_size=2),
            "return_candidates": st.booleans(),
            "raw_prompt": st.booleans(),
            "system_prompt": ODD_TEXT,
        },
    )


@dataclass(frozen=True)
class Call:
    method: str
    request: Any
    authorization: str | None


def calls(names: Sequence[str], keys: Sequence[str]) -> st.SearchStrategy[Call]:
    methods = [m for m in METHODS for _ in range(METHOD_WEIGHTS.get(m, 1))]

    valid = [f"Bearer {k}" for k in keys]
    # Mostly valid keys, so most requests get past authentication to the checks behind it.
    wrong_secrets = [f"Bearer {k[:-1]}{'y' if k.endswith('x') else 'x'}" for k in keys]  # a real id: scrypt runs
    odd = [None, "Bearer nope", "Basic abc", "Bearer " + "x" * 5000, *wrong_secrets]
    credentials = st.sampled_from([*valid * 6, *odd] if keys else [None])

    def build(method: str) -> st.SearchStrategy[Call]:
        cls, _ = METHODS[method]
        fields = message(cls.DESCRIPTOR, names)
        if cls is pb.GenerateRequest:
            fields = st.one_of(fields, plausible_generate(names))
        return st.builds(lambda kwargs, auth: Call(method, _construct(cls, kwargs), auth), fields, credentials)

    return st.sampled_from(methods).flatmap(build)


def _construct(cls: type, kwargs: dict[str, Any]) -> Any:
    """The message; a value protobuf itself refuses (a float in an int field after all) drops
    that field."""
    try:
        return cls(**kwargs)
    except (ValueError, TypeError):
        kept = {}
        for name, item in kwargs.items():
            try:
                cls(**{name: item})
                kept[name] = item
            except (ValueError, TypeError):
                pass
        return cls(**kept)


@dataclass
class Outcomes:
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    by_method: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    bad: list[str] = field(default_factory=list)  # INTERNAL / UNKNOWN answers, with their request
    examples: dict[tuple[str, str], str] = field(default_factory=dict)  # (method, code) -> first details
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, call: Call, code: str, details: str = "") -> None:
        with self.lock:
            self.codes[code] += 1
            self.by_method[call.method][code] += 1
            self.examples.setdefault((call.method, code), details[:160])
            if code in ("INTERNAL", "UNKNOWN"):
                self.bad.append(f"{call.method} {code} {details[:200]} <- {str(call.request)[:300]!r}")


def send(channel: grpc.Channel, call: Call, outcomes: Outcomes, timeout: float) -> None:
    stub = pb_grpc.AligndStub(channel)
    method = getattr(stub, call.method)
    metadata = (("authorization", call.authorization),) if call.authorization is not None else None
    try:
        if METHODS[call.method][1]:
            for _ in method(call.request, timeout=timeout, metadata=metadata):
                pass
        else:
            method(call.request, timeout=timeout, metadata=metadata)
        outcomes.add(call, "OK")
    except grpc.RpcError as error:
        outcomes.add(call, error.code().name, error.details() or "")


def fuzz(
    channel: grpc.Channel,
    count: int,
    names: Sequence[str],
    keys: Sequence[str] = (),
    concurrency: int = 8,
    timeout: float = 120.0,
    progress: Callable[[int], None] | None = None,
) -> Outcomes:
    """Send `count` generated calls, `concurrency` at a time; the answers' status codes."""
    outcomes = Outcomes()
    slots = threading.Semaphore(concurrency)
    sent = 0
    with ThreadPoolExecutor(concurrency) as pool:

        def release(_: object) -> None:
            slots.release()

        @settings(
            max_examples=count,
            database=None,
            deadline=None,
            derandomize=True,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(calls(names, keys))
        def one(call: Call) -> None:
            nonlocal sent
            slots.acquire()
            pool.submit(send, channel, call, outcomes, timeout).add_done_callback(release)
            sent += 1
            if progress is not None:
                progress(sent)

        one()
    return outcomes
