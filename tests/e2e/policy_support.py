"""Helpers for the policy lifecycle tests: policy parts from a directory, admin stubs, load."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from acgs.v1 import governance_pb2 as gpb
from acgs.v1 import governance_pb2_grpc as gpb_grpc
from acgs.v1 import policy_admin_pb2 as pb

from tests.client import allow_input, decide_request
from tests.plugins.servers import REPO, ServerProcess

POLICY = REPO / "policy"


def parts(directory: Path = POLICY, **manifest: Any) -> pb.CreatePolicyVersionRequest:
    """The CreatePolicyVersion request of ``directory``, with manifest fields overridden."""
    modules = {f.relative_to(directory).as_posix(): f.read_text()
               for f in sorted(directory.rglob("*.rego"))}
    doc = json.loads((directory / "manifest.json").read_text())
    doc.update(manifest)
    data = directory / "data.json"
    return pb.CreatePolicyVersionRequest(modules=modules, manifest_json=json.dumps(doc),
                                         data_json=data.read_text() if data.exists() else "{}")


@dataclass
class Load:
    """Threads deciding on every server until stopped; records (start, revision) or errors."""

    servers: list[ServerProcess]
    results: list[tuple[float, str, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for server in self.servers:
            thread = threading.Thread(target=self._run, args=(server,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self, server: ServerProcess) -> None:
        # request_ids unique across Loads: a repeated one would replay the decision made
        # under the policy of the earlier Load (idempotency), not be decided anew.
        prefix = uuid.uuid4().hex[:12]
        with server.channel() as ch:
            stub = gpb_grpc.GovernanceStub(ch)
            n = 0
            while not self._stop.is_set():
                n += 1
                started = time.monotonic()
                try:
                    d = stub.Decide(decide_request(allow_input(), request_id=f"load-{prefix}-{n}"),
                                    timeout=5)
                    self.results.append((started, d.policy_revision, d.effect))
                except grpc.RpcError as err:
                    self.errors.append(f"{server.address}: {err.code()}: {err.details()}")  # type: ignore[attr-defined]
                time.sleep(0.005)

    def after(self, moment: float) -> list[tuple[float, str, int]]:
        return [r for r in list(self.results) if r[0] > moment]


def effect_name(effect: int) -> str:
    return str(gpb.Effect.Name(effect))  # type: ignore[arg-type]
