"""The server's experiments: definitions in memory, their records and feedback in the store.

The service asks it which arm serves a request (`route`), records what was served (`record`,
returning only once the record is committed), and answers feedback, reports and admin calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf import json_format

from alignd.config import ConfigError, ServerConfig, experiment_store_location, experiment_store_setting
from alignd.decoding.base import DecodeResult
from alignd.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from alignd.server.experiments.databases import one_line, redact
from alignd.server.experiments.definitions import (
    ArmSpec,
    ExperimentSpec,
    check_storable,
    check_subject,
    experiment_from_config,
    serve_by_arm,
    validate_experiment,
)
from alignd.server.experiments.report import build_report
from alignd.server.experiments.store import ExperimentStore, Feedback, RequestRecord
from alignd.server.metrics import Metrics
from alignd.v1 import alignd_pb2 as pb

if TYPE_CHECKING:
    from alignd.server.convert import ParsedGenerate

log = logging.getLogger("alignd.experiments")

MAX_FEEDBACK_KEY_CHARS = 100
NO_STORE = "experiments are off on this server (no experiment store: see the experiment_store setting)"


@dataclass(frozen=True)
class Routed:
    """A request that named an experiment: its arm and the request the arm serves."""

    experiment: ExperimentSpec
    arm: ArmSpec
    subject: str
    request: pb.GenerateRequest


def configured_experiments(
    config: ServerConfig, check_arm: Callable[[pb.GenerateRequest], None]
) -> list[ExperimentSpec]:
    """The config's [[experiments]] tables, validated with `check_arm` (ConfigError naming the arm).
    Start-up runs it twice: before the policy loads with a check that needs none, then with the
    service's full check."""
    configured: list[ExperimentSpec] = []
    for i, table in enumerate(config.experiments):
        where = f"experiments[{i}]" + (f" ({table.get('name')!r})" if isinstance(table, dict) else "")
        try:
            configured.append(validate_experiment(experiment_from_config(table), check_arm, "config"))
        except (InvalidArgument, FailedPrecondition) as error:
            raise ConfigError(f"{where}.{error}") from None
    names = [spec.name for spec in configured]
    if len(set(names)) != len(names):
        raise ConfigError(f"experiments: duplicate experiment names in {names}")
    return configured


class Experiments:
    def __init__(self, store: ExperimentStore | None, check_arm: Callable[[pb.GenerateRequest], None]) -> None:
        self.store = store
        self._check_arm = check_arm
        self._specs: dict[str, ExperimentSpec] = {}

    @classmethod
    async def open(
        cls, config: ServerConfig, metrics: Metrics, check_arm: Callable[[pb.GenerateRequest], None]
    ) -> Experiments:
        """Validate the configured experiments (ConfigError naming the arm), open the store, save
        the configured definitions and load the ones created over RPC earlier."""
        configured = configured_experiments(config, check_arm)
        location = experiment_store_location(config)
        if location is None:
            return cls(None, check_arm)
        try:
            store = ExperimentStore(location, metrics, queue_size=config.store_queue_size)
        except Exception as error:  # database errors, unwritable folders, a newer schema: one line
            shown, problem = redact(str(location)), redact(str(location), one_line(error))
            raise ConfigError(f"{experiment_store_setting()}: cannot open {shown!r}: {problem}") from None
        store.start()
        experiments = cls(store, check_arm)
        stored = {s.name: s for s in await store.experiments()}
        for spec in configured:
            definition = _definition(spec)
            earlier = stored.get(spec.name)
            if earlier is not None and earlier.definition == definition:
                spec = dataclasses.replace(spec, created_unix=earlier.created_unix)
                experiments._specs[spec.name] = spec
                continue
            if earlier is not None:
                # Same name, new arms: earlier records stay and are reported with the new arms.
                log.warning(
                    "experiment %r: the config changes its stored definition (%s); records so far are kept",
                    spec.name,
                    earlier.source,
                )
            spec = dataclasses.replace(spec, created_unix=time.time())
            await store.save_experiment(spec.name, definition, "config", spec.created_unix, replace=True)
            experiments._specs[spec.name] = spec
        await experiments.refresh()
        log.info("experiment store %s: %d experiments", store.database.description, len(experiments._specs))
        return experiments

    async def refresh(self) -> None:
        """Load stored experiments this server does not know yet (created through another replica
        sharing the store since start-up)."""
        if self.store is None:
            return
        for stored in await self.store.experiments():
            if stored.name in self._specs:
                continue
            try:
                message = json_format.Parse(stored.definition, pb.Experiment(), ignore_unknown_fields=True)
                self._specs[stored.name] = validate_experiment(
                    message, self._check_arm, stored.source, stored.created_unix
                )
            except (json_format.ParseError, InvalidArgument, FailedPrecondition) as error:
                # Created for another model, objective set or version: keep its records, do not serve it.
                log.warning("stored experiment %r cannot be served here and is skipped: %s", stored.name, error)

    async def _known(self, name: str) -> bool:
        """Whether `name` is an experiment here, looking in the store once when it is not."""
        if name not in self._specs:
            await self.refresh()
        return name in self._specs

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()

    def _spec(self, name: str, field: str) -> ExperimentSpec:
        spec = self._specs.get(name)
        if spec is None:
            raise NotFound(f"{field}: no experiment named {name!r}")
        return spec

    def _require_store(self) -> ExperimentStore:
        if self.store is None:
            raise FailedPrecondition(NO_STORE)
        return self.store

    # -- serving ---------------------------------------------------------------------------

    async def route(self, request: pb.GenerateRequest) -> Routed | None:
        """The arm serving `request` (None when it names no experiment). An experiment unknown
        here is looked up in the store first (another replica may have created it)."""
        if not request.experiment:
            if request.subject:
                raise InvalidArgument("subject", "given without an experiment")
            return None
        await self._known(request.experiment)
        spec = self._spec(request.experiment, "experiment")
        check_subject(request.subject)
        arm = spec.arm_for(request.subject)
        return Routed(spec, arm, request.subject, serve_by_arm(spec, arm, request))

    async def check_new_request_id(self, request_id: str) -> None:
        """Refuse a client-chosen id that is already recorded (or not storable) before decoding,
        not after."""
        check_storable("request_id", request_id)
        if await self._require_store().has_request(request_id):
            raise AlreadyExists(f"request_id: {request_id!r} is already recorded")

    async def record(
        self, routed: Routed, parsed: ParsedGenerate, result: DecodeResult, request_id: str, latency_seconds: float
    ) -> None:
        """Store what was served; returns once it is committed (the response may then be sent)."""
        await self._require_store().record_request(
            RequestRecord(
                request_id=request_id,
                experiment=routed.experiment.name,
                arm=routed.arm.name,
                subject=routed.subject,
                created_unix=time.time(),
                strategy=parsed.strategy.name,
                params=dataclasses.asdict(parsed.params),
                sampling=dataclasses.asdict(parsed.sampling),
                weights=parsed.weights.as_dict(),
                rewards={k: float(v) for k, v in result.rewards.items()},
                weighted_score=float(result.weighted_score),
                latency_seconds=latency_seconds,
                prompt_tokens=result.usage.prompt_tokens,
                generated_tokens=result.usage.generated_tokens,
                finish_reason=result.finish_reason,
            )
        )

    # -- feedback, reports, admin ----------------------------------------------------------

    async def feedback(self, message: pb.FeedbackRequest) -> bool:
        if not message.request_id:
            raise InvalidArgument("request_id", "must not be empty")
        if len(message.key) > MAX_FEEDBACK_KEY_CHARS:
            raise InvalidArgument("key", f"{len(message.key)} characters, over the limit of {MAX_FEEDBACK_KEY_CHARS}")
        for field in ("request_id", "key", "preferred_over"):
            check_storable(field, getattr(message, field))
        kind = message.WhichOneof("feedback")
        if kind == "thumbs_up":
            feedback = Feedback(message.request_id, "thumbs", 1.0 if message.thumbs_up else 0.0, message.key)
        elif kind == "rating":
            if not math.isfinite(message.rating):
                raise InvalidArgument("rating", f"must be finite, got {message.rating}")
            feedback = Feedback(message.request_id, "rating", message.rating, message.key)
        elif kind == "preferred_over":
            if not message.preferred_over:
                raise InvalidArgument("preferred_over", "must name another request id")
            if message.preferred_over == message.request_id:
                raise InvalidArgument("preferred_over", "a response cannot be preferred over itself")
            feedback = Feedback(message.request_id, "preference", 1.0, message.key, message.preferred_over)
        else:
            raise InvalidArgument("feedback", "set one of thumbs_up, rating, preferred_over")
        return await self._require_store().record_feedback(feedback)

    async def report(self, name: str) -> pb.ExperimentReport:
        await self._known(name)
        spec = self._spec(name, "name")
        rows = await self._require_store().rows(name)
        # Statistics over many rows take a while: off the event loop.
        return await asyncio.get_running_loop().run_in_executor(None, build_report, spec, rows)

    async def list(self) -> list[pb.Experiment]:
        """Every experiment served here, those another replica created since included."""
        await self.refresh()
        return [spec.to_message() for spec in sorted(self._specs.values(), key=lambda s: (s.created_unix, s.name))]

    async def create(self, message: pb.Experiment) -> pb.Experiment:
        store = self._require_store()
        now = time.time()
        spec = validate_experiment(message, self._check_arm, "rpc", now)
        if await self._known(spec.name):
            raise AlreadyExists(f"name: an experiment named {spec.name!r} exists")
        await store.save_experiment(spec.name, _definition(spec), "rpc", now, replace=False)
        self._specs[spec.name] = spec
        log.info("experiment %r created with arms %s", spec.name, [a.name for a in spec.arms])
        return spec.to_message()


def _definition(spec: ExperimentSpec) -> str:
    message = spec.to_message()
    message.ClearField("source")
    message.ClearField("created_unix")
    return json_format.MessageToJson(message, indent=None)
