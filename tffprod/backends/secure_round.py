"""The coordinator's side of one round's secure aggregation (plans with ``[dp] secure_aggregation``).

The coordinator only relays: it asks the round's sites for their signed keys (step 0, again among
the others if one does not answer), hands every site all the keys and collects each site's
encrypted shares for the others (step 1), sends each site its shares with its release request
(step 2, in the round router's per-site calls) and, once the releases are in, tells the sites who
dropped so they reveal just enough to remove every mask (step 3). It learns the sum of the
releases modulo 2**bits, which it decodes into the round's merged partial result
(:mod:`tffprod.privacy.secagg`). A release that arrives after step 3 began is refused.
TF-free.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from tffprod.errors import SessionError, TffprodError
from tffprod.privacy.secagg import Advertisement, Aggregator, EncryptedShare, SecAggError, UnmaskResponse
from tffprod.privacy.secagg.codec import decode
from tffprod.privacy.secagg.settings import MIN_SITES, layout_of, round_settings
from tffprod.protocol import release_pb2
from tffprod.protocol.terms import ReleaseTerms

__all__ = ["SecureRound"]

log = logging.getLogger(__name__)

# Sends one step to a site: (site, step, request message) -> response message; raises TffprodError.
StepSender = Callable[[str, str, Any], Any]


class SecureRound:
    """One training round's secure aggregation among ``sites`` of an approved ``plan``.

    Args:
        plan: the verified plan (its privacy terms have ``secure_aggregation``).
        round_num: the round.
        sites: the sites called this round.
        send: delivers a step's request to a site (the backend's ``secagg_sender``).
    """

    def __init__(self, plan: Any, round_num: int, sites: Sequence[str], send: StepSender) -> None:
        entry = next(c for c in plan.computations if c["role"] == "train")
        self._layout = layout_of(ReleaseTerms(entry, plan.computation_bytes("train")).result_slots())
        self._plan, self.round_num, self._send = plan, round_num, send
        self.participants = sorted(sites)
        self.failed: dict[str, str] = {}  # site -> why it left the round before its release
        self._aggregator: Aggregator | None = None
        self._message: release_pb2.SecAggRound | None = None
        self.settings: Any = None  # the round's RoundSettings, once agreed
        self.last_total: np.ndarray | None = None  # the unmasked sum modulo 2**bits, once finished

    def _settings(self) -> Any:
        try:
            return round_settings(self._plan.privacy, self.participants, self._layout)
        except SecAggError:
            raise SessionError(f"round {self.round_num}: secure aggregation needs at least {MIN_SITES} sites; "
                               f"{len(self.participants)} remain ({self._why()})") from None

    def _why(self) -> str:
        return "; ".join(f"{site}: {reason}" for site, reason in self.failed.items()) or "none failed"

    def agree(self) -> list[str]:
        """Steps 0 and 1; the sites whose shares were delivered (U1), who may release this round.

        Raises:
            SessionError: fewer than three sites (or than the threshold) remain.
        """
        while True:
            settings = self._settings()
            self._message = release_pb2.SecAggRound(plan_id=self._plan.plan_id, round=self.round_num,
                                                    participants=self.participants)
            ads = {}
            for site in self.participants:
                try:
                    ads[site] = self._send(site, "advertise", self._message)
                except TffprodError as e:
                    self.failed[site] = f"keys: {e}"
            if len(ads) == len(self.participants):
                break
            self.participants = [site for site in self.participants if site in ads]  # agree again without them
        aggregator = Aggregator(self.participants, settings.threshold, settings.bits, settings.layout.length)
        for ad in ads.values():
            aggregator.add_advertisement(Advertisement(ad.name, ad.index, ad.context, ad.s_public, ad.c_public,
                                                       ad.signature))
        aggregator.advertisements()  # relayed: no more keys are taken this round
        request = release_pb2.SecAggShareRequest(round=self._message, advertisements=list(ads.values()))
        for site in self.participants:
            try:
                response = self._send(site, "share", request)
                aggregator.add_shares(site, {s.recipient: EncryptedShare(s.sender, s.recipient, s.nonce, s.ciphertext)
                                             for s in response.shares})
            except (TffprodError, SecAggError) as e:
                self.failed[site] = f"shares: {e}"
        try:
            u1 = aggregator.u1()
        except SecAggError as e:
            raise SessionError(f"round {self.round_num}: secure aggregation could not start: {e} ({self._why()})") \
                from None
        self._aggregator, self.settings = aggregator, settings
        return list(u1)

    def input_for(self, site: str) -> release_pb2.SecAggInput:
        """What ``site`` needs with its release: U1 and the shares the others sent it."""
        assert self._aggregator is not None and self._message is not None
        return release_pb2.SecAggInput(round=self._message, survivors=self._aggregator.u1(), shares=[
            release_pb2.SecAggEncryptedShare(sender=s.sender, recipient=s.recipient, nonce=s.nonce,
                                             ciphertext=s.ciphertext) for s in self._aggregator.shares_for(site)])

    def add_release(self, site: str, masked: np.ndarray) -> None:
        """Step 2's answer from ``site`` (refused once step 3 began: a late release)."""
        assert self._aggregator is not None
        self._aggregator.add_masked(site, masked)

    def finish(self) -> list[np.ndarray]:
        """Step 3: the decoded sum of the releases that arrived, as the result's tensors in order.

        Raises:
            SessionError: too few releases or unmask answers to remove the masks.
        """
        assert self._aggregator is not None and self._message is not None
        try:
            dropped, survivors = self._aggregator.begin_unmask()
        except SecAggError as e:
            raise SessionError(f"round {self.round_num}: {e}") from None
        request = release_pb2.SecAggUnmaskRequest(round=self._message, dropped=dropped, survivors=survivors)
        answers = []
        for site in survivors:
            try:
                answer = self._send(site, "unmask", request)
            except TffprodError as e:
                self.failed[site] = f"unmask: {e}"
                continue
            answers.append(UnmaskResponse(answer.name, _ints(answer.b_shares), _ints(answer.s_shares)))
        if dropped:
            log.warning("round %d: secure aggregation removed the masks of %s, which sent no release", self.round_num,
                        ", ".join(dropped))
        settings = self.settings
        try:
            total = self._aggregator.finish(answers)
        except SecAggError as e:
            raise SessionError(f"round {self.round_num}: secure aggregation could not remove the masks: {e}") from None
        self.last_total = total
        return decode(total, settings.layout, scale=settings.scale, fixed_scale=settings.fixed_scale,
                      bits=settings.bits)


def _ints(shares: Any) -> dict[str, int]:
    return {name: int.from_bytes(value, "big") for name, value in shares.items()}
