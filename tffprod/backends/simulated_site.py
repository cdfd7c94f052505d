"""A site simulated in-process for the local backend, on the same release path as a real one.

Under an approved plan the local backend does not call its site workers with TFF's
executor protocol: each simulated site approves the plan over its datasets (as
``tffprod site approve`` would), keeps a privacy ledger in a folder of its own,
and answers releases with the site's own :class:`tffprod.executors.release.ReleaseHandler`
on its local worker. So a simulation checks the state against the plan, pins the
plan's privacy parameters, bounds the clipped sum, counts rounds and evaluations,
exactly as the sites of a deployment do; only the network and the gateway's
authentication are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import grpc

from tffprod.errors import ReleaseRefusedError
from tffprod.executors.approvals import ApprovalStore, approve
from tffprod.executors.datarefs import CatalogEntry, DataRefs, RequestRefused
from tffprod.executors.gateway import EXECUTOR_SERVICE, MESSAGE_LIMITS
from tffprod.executors.ledger import LEDGER_FILE, SiteLedger
from tffprod.executors.release import ReleaseHandler
from tffprod.protocol import release_pb2

__all__ = ["ReleaseRefusedError", "SimulatedSite"]


class SimulatedSite:
    """One site of the local backend, answering releases of one plan.

    Args:
        name: the site's name.
        rows: registry rows of the site's datasets the plan names (train and eval).
        plan: the verified plan.
        worker_address: the site's local worker.
        state_dir: where its approval and ledger live.
        client_paths: returns the shard paths of a dataset with a client-id column.
        credentials: its key, certificate and CA (PEM), for plans with secure aggregation.
    """

    def __init__(self, name: str, rows: Sequence[Mapping[str, Any]], plan: Any, worker_address: str,
                 state_dir: Path, client_paths: Callable[[Mapping[str, Any]], Sequence[Path]],
                 credentials: Optional[tuple[bytes, bytes, bytes]] = None) -> None:
        catalog = {}
        for row in rows:
            clients = tuple(str(p) for p in client_paths(row)) if row.get("client_id") else ()
            catalog[row["name"]] = CatalogEntry(
                name=row["name"], path=str(Path(row["path"]).resolve()), format=row["format"], schema=row["schema"],
                num_examples=int(row["num_examples"]), content_hash=row["content_hash"], client_id=row.get("client_id"),
                num_clients=int(row.get("num_clients") or 1), client_paths=clients)
        self.approval = approve(plan, site=name, catalog=catalog, state_dir=state_dir)
        self._channel = grpc.insecure_channel(worker_address, options=MESSAGE_LIMITS)
        self._ledger = SiteLedger(Path(state_dir) / LEDGER_FILE, site=name, budgets={})
        self._handler = ReleaseHandler(name, ApprovalStore(state_dir), self._ledger, DataRefs(name, catalog),
                                       self._call_worker, credentials=credentials)

    def _call_worker(self, method: str, request: Any, response_type: Any, context: Any) -> Any:
        call = self._channel.unary_unary(f"/{EXECUTOR_SERVICE}/{method}",
                                         request_serializer=type(request).SerializeToString,
                                         response_deserializer=response_type.FromString)
        try:
            return call(request)
        except grpc.RpcError as e:
            raise RequestRefused(e.code(), e.details() or "") from None

    def send(self, request: release_pb2.ReleaseRequest) -> release_pb2.ReleaseResponse:
        """Answer one release, as the site's gateway would (the plan's own coordinator and federation)."""
        try:
            raw, _ = self._handler.release(request.SerializeToString(), self.approval.coordinator,
                                           self.approval.federation, None)
        except RequestRefused as refused:
            raise ReleaseRefusedError(f"{refused.code.name}: {refused.detail}") from None
        return release_pb2.ReleaseResponse.FromString(raw)

    def secagg(self, step: str, message: Any) -> Any:
        """Answer one secure aggregation step, as the site's gateway would."""
        responses: dict[str, Any] = {"advertise": release_pb2.SecAggAdvertisement,
                                     "share": release_pb2.SecAggShareResponse,
                                     "unmask": release_pb2.SecAggUnmaskResponse}
        try:
            raw, _ = self._handler.secagg(step, message.SerializeToString(), self.approval.coordinator,
                                          self.approval.federation)
        except RequestRefused as refused:
            raise ReleaseRefusedError(f"{refused.code.name}: {refused.detail}") from None
        return responses[step].FromString(raw)

    def close(self) -> None:
        self._channel.close()
        self._ledger.close()
