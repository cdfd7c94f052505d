"""The coordinator's side of one round: relay, collect, then remove the masks from the survivors' sum.

The coordinator is untrusted: it only relays advertisements and encrypted shares, collects masked
inputs, fixes who survived, and from the survivors' unmask responses reconstructs each survivor's
self-mask seed b and each dropped participant's s key (checked against its advertised public key).
It recomputes a dropped participant's pairwise masks with every survivor from that key, removes
all masks and learns the survivors' sum mod 2**bits. A masked input that arrives once the unmask
step has begun is refused (a late release), so no input is ever unmasked alone.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric import x25519

from tffprod.privacy.secagg.errors import SecAggError, who
from tffprod.privacy.secagg.keys import Advertisement
from tffprod.privacy.secagg.masks import add_mod, check_bits, check_vector, prg, sub_mod
from tffprod.privacy.secagg.protocol import SELF_MASK, EncryptedShare, UnmaskResponse, check_round, pairwise_mask
from tffprod.privacy.secagg.shamir import combine

__all__ = ["Aggregator"]


class Aggregator:
    """The coordinator's state for one round.

    Args:
        names: every participant invited to the round; a participant's index is its position here.
        threshold: how many shares recover a secret (floor(n/2)+1..n).
        bits: inputs are integers modulo 2**bits (1..62).
        length: the number of entries of an input.

    Raises:
        SecAggError: fewer than 3 names, repeated names, or a threshold, bits or length out of range.
    """

    def __init__(self, names: Sequence[str], threshold: int, bits: int, length: int) -> None:
        names = list(names)
        if not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
            raise SecAggError("participant 'coordinator': the round's names repeat or are not strings")
        check_round(len(names), threshold, "coordinator")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise SecAggError(f"participant 'coordinator': length must be a whole number >= 1, got {length!r}")
        self.names, self.threshold, self.bits, self.length = names, threshold, check_bits(bits), length
        self._index = {name: i for i, name in enumerate(names)}
        self._ads: dict[str, Advertisement] = {}
        self._ads_closed = False
        self._shares: dict[str, dict[str, EncryptedShare]] = {}  # sender -> recipient -> share
        self._u1: list[str] | None = None
        self._masked: dict[str, np.ndarray] = {}
        self._lists: tuple[list[str], list[str]] | None = None  # (dropped, survivors), fixed by begin_unmask
        self._finished = False

    @staticmethod
    def _refuse(name: str, problem: str) -> SecAggError:
        return SecAggError(f"participant {who(name)}: {problem}")

    def add_advertisement(self, advertisement: Advertisement) -> None:
        """Step 0: collect an advertisement (the participants verify it; here only name, index and context)."""
        name = advertisement.name
        if self._ads_closed:
            raise self._refuse(name, "late advertisement: the advertisements were already relayed")
        if name not in self._index or name in self._ads:
            raise self._refuse(name, "not a participant of this round, or advertised twice")
        if advertisement.index != self._index[name]:
            raise self._refuse(name, f"advertises index {advertisement.index!r}, expected {self._index[name]}")
        if self._ads and advertisement.context != next(iter(self._ads.values())).context:
            raise self._refuse(name, "advertises keys for another round context")
        self._ads[name] = advertisement

    def advertisements(self) -> list[Advertisement]:
        """Step 0, relaying: every advertisement collected, by index; no advertisement is taken after this."""
        if len(self._ads) < max(3, self.threshold):
            raise self._refuse("coordinator", f"only {len(self._ads)} participants advertised keys, too few for "
                               f"a threshold of {self.threshold}")
        self._ads_closed = True
        return sorted(self._ads.values(), key=lambda ad: ad.index)

    def add_shares(self, sender: str, shares: Mapping[str, EncryptedShare]) -> None:
        """Step 1: collect ``sender``'s encrypted shares, one for every other advertiser."""
        if not self._ads_closed or self._u1 is not None:
            raise self._refuse(sender, "shares arrive before the advertisements were relayed, or late")
        if sender not in self._ads or sender in self._shares:
            raise self._refuse(sender, "shares from a participant that did not advertise, or a second time")
        if set(shares) != set(self._ads) - {sender}:
            raise self._refuse(sender, "its shares do not go to exactly the other advertisers")
        if any((share.sender, share.recipient) != (sender, to) for to, share in shares.items()):
            raise self._refuse(sender, "a share is labelled with another sender or recipient")
        self._shares[sender] = dict(shares)

    def u1(self) -> list[str]:
        """U1: the participants whose shares were collected, sorted; the first call closes step 1."""
        if self._u1 is None:
            if len(self._shares) < self.threshold:
                raise self._refuse("coordinator", f"only {len(self._shares)} participants shared keys, fewer than "
                                   f"the threshold {self.threshold}")
            self._u1 = sorted(self._shares)
        return list(self._u1)

    def shares_for(self, recipient: str) -> list[EncryptedShare]:
        """Step 1, routing: the shares the members of U1 sent ``recipient`` (closes step 1)."""
        if recipient not in self._ads:
            raise self._refuse(recipient, "no shares for a participant that did not advertise")
        return [self._shares[sender][recipient] for sender in self.u1() if sender != recipient]

    def add_masked(self, name: str, masked: np.ndarray) -> None:
        """Step 2: collect ``name``'s masked input; refused once the unmask step began (a late release)."""
        if self._lists is not None:
            raise self._refuse(name, "late release: the unmask step of this round has begun")
        if self._u1 is None or name not in self._u1 or name in self._masked:
            raise self._refuse(name, "a masked input from a participant not in U1, or a second one")
        self._masked[name] = check_vector(masked, self.length, self.bits, name, "masked input").copy()

    def begin_unmask(self) -> tuple[list[str], list[str]]:
        """Step 3: ``(dropped, survivors)``, fixed by the first call: U1 members without, and with, a masked input.

        Raises:
            SecAggError: fewer than ``threshold`` masked inputs (the round cannot be unmasked).
        """
        if self._lists is None:
            if self._u1 is None or len(self._masked) < self.threshold:
                raise self._refuse("coordinator", f"only {len(self._masked)} masked inputs, fewer than the "
                                   f"threshold {self.threshold}")
            self._lists = (sorted(set(self._u1) - set(self._masked)), sorted(self._masked))
        return list(self._lists[0]), list(self._lists[1])

    def finish(self, unmask_responses: Iterable[UnmaskResponse]) -> np.ndarray:
        """Step 3, last: the sum mod 2**bits of the survivors' inputs, from at least ``threshold`` responses.

        Raises:
            SecAggError: the unmask step has not begun or the round is finished; a response from a non-survivor,
                repeated, or not answering the lists; too few responses; shares that do not reconstruct.
        """
        if self._lists is None or self._finished:
            raise self._refuse("coordinator", "finish before the unmask step began, or a second time")
        dropped, survivors = self._lists
        responses: dict[str, UnmaskResponse] = {}
        for response in unmask_responses:
            if response.name not in survivors or response.name in responses:
                raise self._refuse(response.name, "an unmask response from a non-survivor, or a second one")
            if set(response.b_shares) != set(survivors) or set(response.s_shares) != set(dropped):
                raise self._refuse(response.name, "its unmask response does not answer the lists it was sent")
            responses[response.name] = response
        if len(responses) < self.threshold:
            raise self._refuse("coordinator", f"only {len(responses)} unmask responses, fewer than the threshold "
                               f"{self.threshold}")
        total = np.zeros(self.length, dtype=np.uint64)
        for name in survivors:
            total = add_mod(total, self._masked[name], self.bits)
            b = self._combine(name, "self-mask seed", {r.name: r.b_shares[name] for r in responses.values()})
            total = sub_mod(total, prg(b, self.length, self.bits, label=SELF_MASK), self.bits)
        context = self._ads[survivors[0]].context
        for gone in dropped:
            s_private = x25519.X25519PrivateKey.from_private_bytes(
                self._combine(gone, "s key", {r.name: r.s_shares[gone] for r in responses.values()}))
            if s_private.public_key().public_bytes_raw() != self._ads[gone].s_public:
                raise self._refuse(gone, "the reconstructed s key does not match its advertised public key")
            for name in survivors:  # survivor v added +mask if v sorts before the dropped one, else -mask
                mask = pairwise_mask(s_private, self._ads[name].s_public, context, gone, name, self.length, self.bits)
                total = sub_mod(total, mask, self.bits) if name < gone else add_mod(total, mask, self.bits)
        self._finished = True
        return total

    def _combine(self, owner: str, what: str, shares: Mapping[str, int]) -> bytes:
        try:
            return combine({self._index[holder] + 1: value for holder, value in shares.items()}, self.threshold)
        except SecAggError as e:
            raise self._refuse(owner, f"its {what} cannot be reconstructed ({e})") from None
