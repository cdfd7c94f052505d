"""A site's side of secure aggregation: its part in each round of a plan, held in memory.

For a plan with ``[dp] secure_aggregation`` the coordinator runs each training round in four steps
(``tffprod.site.v1.Release``'s ``SecAggAdvertise``, ``SecAggShare``, then the release itself, then
``SecAggUnmask``; :mod:`tffprod.privacy.secagg` has the protocol). The site takes part in a round of
an approved plan once, among participants that are the plan's training sites, signs its keys with
its own certificate key and checks the others' under its own CA. Its release leaves quantized, with
a discrete Gaussian noise share, modulo 2**bits and masked: alone it is uniformly random. Keys live
only in this process: a site restarted mid-round has dropped out of that round, and a late release
from it finds nothing to mask with. TF-free.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Optional

import grpc
import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tffprod.executors.datarefs import RequestRefused
from tffprod.privacy.secagg import Advertisement, EncryptedShare, Participant, SecAggError
from tffprod.privacy.secagg.settings import RoundSettings
from tffprod.privacy.secagg.shamir import SHARE_BYTES
from tffprod.protocol import release_pb2

__all__ = ["SiteSecAgg", "round_context"]

_KEPT_ROUNDS = 32  # participations kept at once (a coordinator runs one round of a plan at a time)


def round_context(plan_id: str, round_num: int, participants: tuple[str, ...]) -> bytes:
    """What every message of a round is bound to: the plan, the round and its participants."""
    return f"tffprod.secagg/1\0{plan_id}\0{round_num}\0{','.join(participants)}".encode()


class SiteSecAgg:
    """The site's participations in secure aggregation rounds.

    Args:
        site: the site's name (its certificate's CN).
        credentials: the site's TLS ``(key, certificate, CA)`` PEM bytes; None (a plaintext development
            site) refuses secure aggregation.
    """

    def __init__(self, site: str, credentials: Optional[tuple[bytes, bytes, bytes]]) -> None:
        self.site = site
        self._signing_key: Optional[ec.EllipticCurvePrivateKey] = None
        self._cert = self._ca = b""
        if credentials is not None:
            key, self._cert, self._ca = credentials
            loaded = serialization.load_pem_private_key(key, password=None)
            if isinstance(loaded, ec.EllipticCurvePrivateKey):
                self._signing_key = loaded
        self._rounds: collections.OrderedDict[tuple[str, int], tuple[tuple[str, ...], Participant]] = \
            collections.OrderedDict()
        self._lock = threading.Lock()

    def _refused(self, code: grpc.StatusCode, detail: str) -> RequestRefused:
        return RequestRefused(code, f"site {self.site}: {detail}")

    def advertise(self, plan_id: str, round_num: int, settings: RoundSettings) -> release_pb2.SecAggAdvertisement:
        """Step 0: this site's keys for the round (the same again for the same participants)."""
        if self._signing_key is None:
            raise self._refused(grpc.StatusCode.FAILED_PRECONDITION, "secure aggregation needs the site's TLS key "
                                "and certificate (an ECDSA P-256 key, as 'tffprod certs issue' makes)")
        if self.site not in settings.participants:
            raise self._refused(grpc.StatusCode.INVALID_ARGUMENT, "the round's participants do not include this site")
        key = (plan_id, round_num)
        with self._lock:
            held = self._rounds.get(key)
            if held is not None and held[0] != settings.participants and not held[1].has_shared:
                held = None  # a site dropped out before anyone shared a secret: agree again among the others
            if held is not None and held[0] != settings.participants:
                raise self._refused(grpc.StatusCode.FAILED_PRECONDITION, f"round {round_num} of plan {plan_id[:16]} "
                                    "already has secure aggregation keys among other sites")
            if held is None:
                participant = Participant(self.site, settings.index(self.site), self._signing_key,
                                          round_context(plan_id, round_num, settings.participants), settings.bits,
                                          settings.layout.length)
                self._rounds[key] = held = (settings.participants, participant)
                while len(self._rounds) > _KEPT_ROUNDS:
                    self._rounds.popitem(last=False)
        ad = held[1].advertise()
        return release_pb2.SecAggAdvertisement(name=ad.name, index=ad.index, context=ad.context, s_public=ad.s_public,
                                               c_public=ad.c_public, signature=ad.signature, certificate=self._cert)

    def check_agreed(self, plan_id: str, round_num: int, participants: tuple[str, ...]) -> None:
        """Refuse (before any work) a release for a round this site holds no keys for among ``participants``."""
        with self._lock:
            held = self._rounds.get((plan_id, round_num))
        if held is None or held[0] != participants or not held[1].has_shared:
            raise self._refused(grpc.StatusCode.FAILED_PRECONDITION, f"round {round_num} of plan {plan_id[:16]} has "
                                "no secure aggregation keys here among these sites (advertise and share first; a "
                                "site that restarted has dropped out of the round)")

    def _participant(self, plan_id: str, round_num: int, settings: RoundSettings) -> Participant:
        with self._lock:
            held = self._rounds.get((plan_id, round_num))
        if held is None or held[0] != settings.participants:
            raise self._refused(grpc.StatusCode.FAILED_PRECONDITION, f"round {round_num} of plan {plan_id[:16]} has "
                                "no secure aggregation keys here among these sites (advertise first; a site that "
                                "restarted has dropped out of the round)")
        return held[1]

    def share(self, plan_id: str, round_num: int, settings: RoundSettings,
              advertisements: list[release_pb2.SecAggAdvertisement]) -> release_pb2.SecAggShareResponse:
        """Step 1: check every advertisement under this site's CA, then share its secrets with them."""
        participant = self._participant(plan_id, round_num, settings)
        ads = [Advertisement(a.name, a.index, a.context, a.s_public, a.c_public, a.signature) for a in advertisements]
        certs = {a.name: a.certificate for a in advertisements}
        if sorted(certs) != sorted(settings.participants):
            raise self._refused(grpc.StatusCode.INVALID_ARGUMENT, "the advertisements are not the round's participants")
        shares = self._step(lambda: participant.share_keys(ads, certs, self._ca, settings.threshold))
        return release_pb2.SecAggShareResponse(shares=[
            release_pb2.SecAggEncryptedShare(sender=s.sender, recipient=s.recipient, nonce=s.nonce,
                                             ciphertext=s.ciphertext) for s in shares.values()])

    def mask(self, plan_id: str, round_num: int, settings: RoundSettings, secagg: release_pb2.SecAggInput,
             values: np.ndarray) -> np.ndarray:
        """Step 2: take the shares sent to this site, then mask ``values`` (uint64, below 2**bits) with U1."""
        participant = self._participant(plan_id, round_num, settings)
        shares = [EncryptedShare(s.sender, s.recipient, s.nonce, s.ciphertext) for s in secagg.shares]

        def mask() -> np.ndarray:
            participant.receive_shares(shares)
            return participant.masked_input(values, list(secagg.survivors))

        return self._step(mask)

    def unmask(self, plan_id: str, round_num: int, settings: RoundSettings,
               request: release_pb2.SecAggUnmaskRequest) -> release_pb2.SecAggUnmaskResponse:
        """Step 3: this site's shares for the survivors' self-masks and the dropped sites' mask keys."""
        participant = self._participant(plan_id, round_num, settings)
        answer = self._step(lambda: participant.unmask(list(request.dropped), list(request.survivors)))
        return release_pb2.SecAggUnmaskResponse(
            name=answer.name, b_shares={k: v.to_bytes(SHARE_BYTES, "big") for k, v in answer.b_shares.items()},
            s_shares={k: v.to_bytes(SHARE_BYTES, "big") for k, v in answer.s_shares.items()})

    def _step(self, step: Any) -> Any:
        try:
            return step()
        except SecAggError as e:  # one line, naming the participant and the problem, never key bytes
            raise self._refused(grpc.StatusCode.FAILED_PRECONDITION, f"secure aggregation refused: {e}") from None
