"""One round's message logic: the messages, and a :class:`Participant` (a site's side).

The coordinator's side is :class:`~tffprod.privacy.secagg.aggregator.Aggregator`. Each step is a
method; the caller moves the messages (there is no I/O here)::

    0. p.advertise() -> Advertisement            agg.add_advertisement(ad); agg.advertisements() -> all
    1. p.share_keys(ads, certs, ca, t) -> {q: EncryptedShare}          agg.add_shares(p, shares)
       q.receive_shares(agg.shares_for(q))       agg.u1() -> U1, the participants that shared keys
    2. p.masked_input(x, U1) -> y                agg.add_masked(p, y)
    3. agg.begin_unmask() -> (dropped, survivors), fixed from here on;  p.unmask(dropped, survivors)
       agg.finish(responses) -> the survivors' inputs summed mod 2**bits
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Iterable, Mapping, Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tffprod.privacy.secagg.errors import SecAggError, who
from tffprod.privacy.secagg.keys import (Advertisement, RoundKeys, canonical, shared_seed, sign_advertisement,
                                         verify_advertisement)
from tffprod.privacy.secagg.masks import add_mod, check_bits, check_vector, prg, sub_mod
from tffprod.privacy.secagg.shamir import PRIME, SHARE_BYTES, split

__all__ = ["EncryptedShare", "Participant", "UnmaskResponse", "check_round", "pairwise_mask"]

_SHARE_AD, _SHARE_KEY = b"tffprod-secagg-v1 share", b"share-encryption"
SELF_MASK, _PAIR_MASK = b"self-mask", b"pairwise-mask"


@dataclasses.dataclass(frozen=True)
class EncryptedShare:
    """``sender``'s Shamir shares of its self-mask seed b and its s key for ``recipient`` (AES-256-GCM)."""

    sender: str
    recipient: str
    nonce: bytes
    ciphertext: bytes


@dataclasses.dataclass(frozen=True)
class UnmaskResponse:
    """A survivor's answer to the unmask step: its shares of b per survivor and of the s key per dropped one."""

    name: str
    b_shares: Mapping[str, int]
    s_shares: Mapping[str, int]


def check_round(n: int, threshold: int, party: str) -> None:
    """Refuse a round of fewer than 3 participants or a threshold outside floor(n/2)+1..n."""
    if n < 3:
        raise SecAggError(f"participant {who(party)}: secure aggregation needs at least 3 participants, got {n}")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not n // 2 + 1 <= threshold <= n:
        raise SecAggError(f"participant {who(party)}: the threshold must be in {n // 2 + 1}..{n} for {n} "
                          f"participants, got {threshold!r}")


def _names(names: Iterable[str], party: str, what: str) -> frozenset[str]:
    listed = None if isinstance(names, (str, bytes)) else list(names)  # a bare string is not a list of names
    if listed is None or not all(isinstance(name, str) for name in listed) or len(set(listed)) != len(listed):
        raise SecAggError(f"participant {who(party)}: the {what} list has duplicates or non-names")
    return frozenset(listed)


def pairwise_mask(s_private: x25519.X25519PrivateKey, s_public: bytes, context: bytes, me: str, peer: str,
                  length: int, bits: int) -> np.ndarray:
    """PRG(s_uv): the mask ``me`` and ``peer`` both derive from their s keys (``me`` holds the private one)."""
    return prg(shared_seed(s_private, s_public, context, (me, peer)), length, bits, label=_PAIR_MASK)


class Participant:
    """A site's side of one round: holds its keys, its self-mask seed and the shares peers sent it.

    Args:
        name: the site's name (the CN of its certificate).
        index: its index in the round (the coordinator's order of names); shares are evaluated at index + 1.
        signing_key: the site's certificate private key (ECDSA P-256).
        context: the round context (plan id and round number), as bytes.
        bits: inputs are integers modulo 2**bits (1..62).
        length: the number of entries of an input.
    """

    def __init__(self, name: str, index: int, signing_key: ec.EllipticCurvePrivateKey, context: bytes,
                 bits: int, length: int) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1 or not isinstance(context, bytes):
            raise SecAggError(f"participant {who(name)}: invalid length or context")
        self.name, self.index, self.context = name, index, context
        self.bits, self.length = check_bits(bits), length
        self._keys = RoundKeys.generate()
        self._ad = sign_advertisement(name, index, context, self._keys, signing_key)
        self._peers: dict[str, Advertisement] = {}
        self._threshold = 0
        self._b: bytes | None = None
        self._shares: dict[str, tuple[int, int]] = {}  # owner -> (share of its b, share of its s key)
        self._u1: frozenset[str] | None = None
        self._answer: tuple[frozenset[str], frozenset[str], UnmaskResponse] | None = None

    def _refuse(self, problem: str) -> SecAggError:
        return SecAggError(f"participant {who(self.name)}: {problem}")

    @property
    def has_shared(self) -> bool:
        """Whether it has shared its keys this round (after which the round's participants are fixed)."""
        return self._b is not None

    def advertise(self) -> Advertisement:
        """Step 0: this round's two public keys, signed with the certificate key."""
        return self._ad

    def share_keys(self, advertisements: Sequence[Advertisement], certs: Mapping[str, bytes], ca_pem: bytes,
                   threshold: int) -> dict[str, EncryptedShare]:
        """Step 1: verify every advertisement, then share b and the s key ``threshold``-of-n with the advertisers.

        Args:
            advertisements: every advertisement the coordinator relayed (this participant's included).
            certs: each advertiser's certificate PEM, by name.
            ca_pem: the federation CA certificate PEM.
            threshold: how many shares recover a secret (floor(n/2)+1..n for n advertisers).

        Returns:
            For each other advertiser, by name, its shares, encrypted for it alone.
        """
        if self._b is not None:
            raise self._refuse("it has already shared its keys this round")
        peers: dict[str, Advertisement] = {}
        for ad in advertisements:
            if ad.name not in certs:
                raise self._refuse(f"no certificate for advertiser {who(ad.name)}")
            verify_advertisement(ad, certs[ad.name], ca_pem, self.context)
            if ad.name in peers or any(ad.index == other.index for other in peers.values()):
                raise self._refuse(f"the advertisement of {who(ad.name)} repeats a name or an index")
            peers[ad.name] = ad
        mine = peers.get(self.name)
        if mine is None or (mine.index, mine.s_public, mine.c_public) != (self.index, self._ad.s_public,
                                                                          self._ad.c_public):
            raise self._refuse("its own advertisement is missing or altered")
        check_round(len(peers), threshold, self.name)
        b = secrets.token_bytes(32)
        xs = {peer: ad.index + 1 for peer, ad in peers.items()}
        b_shares = split(b, threshold, list(xs.values()))
        s_shares = split(self._keys.s_private.private_bytes_raw(), threshold, list(xs.values()))
        out = {}
        for peer, ad in peers.items():
            pair = (b_shares[xs[peer]], s_shares[xs[peer]])
            if peer == self.name:
                own = pair
                continue
            key = shared_seed(self._keys.c_private, ad.c_public, self.context, (self.name, peer), purpose=_SHARE_KEY)
            nonce, plaintext = secrets.token_bytes(12), b"".join(v.to_bytes(SHARE_BYTES, "big") for v in pair)
            sealed = AESGCM(key).encrypt(nonce, plaintext, canonical(_SHARE_AD, self.context, self.name.encode(),
                                                                     peer.encode()))
            out[peer] = EncryptedShare(self.name, peer, nonce, sealed)
        self._peers, self._threshold, self._b, self._shares[self.name] = peers, threshold, b, own
        return out

    def receive_shares(self, ciphertexts: Iterable[EncryptedShare]) -> None:
        """Step 1, receiving: decrypt and keep the shares other advertisers sent this participant.

        Refuses (and keeps none of the batch) a share addressed to another participant, from a sender
        without a verified advertisement, or that does not decrypt with this pair's key and associated data.
        """
        if self._b is None or self._u1 is not None:
            raise self._refuse("shares arrive before it shared its keys or after it sent its masked input")
        received: dict[str, tuple[int, int]] = {}
        for share in ciphertexts:
            sender = share.sender
            if share.recipient != self.name:
                raise self._refuse(f"the share from {who(sender)} is addressed to {who(share.recipient)}")
            if sender == self.name or sender not in self._peers:
                raise self._refuse(f"a share from {who(sender)}, which has no verified advertisement this round")
            key = shared_seed(self._keys.c_private, self._peers[sender].c_public, self.context, (self.name, sender),
                              purpose=_SHARE_KEY)
            try:
                plaintext = AESGCM(key).decrypt(share.nonce, share.ciphertext, canonical(
                    _SHARE_AD, self.context, sender.encode(), self.name.encode()))
            except (InvalidTag, ValueError, TypeError):
                raise self._refuse(f"the share from {who(sender)} does not decrypt (tampered, or meant for "
                                   "another recipient or round)") from None
            pair = (int.from_bytes(plaintext[:SHARE_BYTES], "big"), int.from_bytes(plaintext[SHARE_BYTES:], "big"))
            if len(plaintext) != 2 * SHARE_BYTES or max(pair) >= PRIME:
                raise self._refuse(f"the share from {who(sender)} is malformed")
            if self._shares.get(sender, pair) != pair or received.get(sender, pair) != pair:
                raise self._refuse(f"a second, different share from {who(sender)}")
            received[sender] = pair
        self._shares.update(received)

    def masked_input(self, values: np.ndarray, survivors_u1: Sequence[str]) -> np.ndarray:
        """Step 2: ``values`` + PRG(b) + the pairwise masks with every other member of U1, mod 2**bits.

        Args:
            values: the input, ``length`` uint64 entries below 2**bits.
            survivors_u1: U1, the participants whose shares were delivered (this one included).
        """
        if self._b is None or self._u1 is not None:
            raise self._refuse("a masked input is asked for before it shared its keys, or a second time")
        u1 = _names(survivors_u1, self.name, "U1")
        missing = sorted(u1 - self._shares.keys())
        if self.name not in u1 or missing:
            raise self._refuse(f"U1 lists {who(missing[0])}, which sent it no share" if missing else "it is not in U1")
        if len(u1) < self._threshold:
            raise self._refuse(f"U1 has {len(u1)} participants, fewer than the threshold {self._threshold}")
        masked = add_mod(check_vector(values, self.length, self.bits, self.name),
                         prg(self._b, self.length, self.bits, label=SELF_MASK), self.bits)
        for peer in sorted(u1 - {self.name}):
            mask = pairwise_mask(self._keys.s_private, self._peers[peer].s_public, self.context, self.name, peer,
                                  self.length, self.bits)
            masked = add_mod(masked, mask, self.bits) if self.name < peer else sub_mod(masked, mask, self.bits)
        self._u1 = u1
        return masked

    def unmask(self, dropped: Sequence[str], survivors: Sequence[str]) -> UnmaskResponse:
        """Step 3: this participant's share of b for each survivor and of the s key for each dropped participant.

        Never reveals both for one participant: refuses a name in both lists, itself as dropped, lists
        that do not split the U1 it masked with, fewer than ``threshold`` survivors, and a second call
        with other lists (the same lists again get the same answer).
        """
        if self._u1 is None:
            raise self._refuse("asked to unmask before it sent its masked input")
        drop, keep = _names(dropped, self.name, "dropped"), _names(survivors, self.name, "survivor")
        both = sorted(drop & keep)
        if both:
            raise self._refuse(f"{who(both[0])} is in both the dropped and the survivor list")
        if self.name in drop:
            raise self._refuse("asked for the share of its own s key, though it sent its masked input")
        if self._answer is not None:
            told_dropped, told_survived, answer = self._answer
            if (drop, keep) == (told_dropped, told_survived):
                return answer
            survived, gone = sorted(drop & told_survived), sorted(keep & told_dropped)
            if survived:
                raise self._refuse(f"asked for the s-key share of {who(survived[0])}, which it was told survived")
            if gone:
                raise self._refuse(f"asked for the b share of {who(gone[0])}, which it was told dropped")
            raise self._refuse("it has already answered the unmask step with other lists")
        stray, unlisted = sorted((drop | keep) - self._u1), sorted(self._u1 - drop - keep)
        if stray or unlisted:
            raise self._refuse(f"{who(stray[0])} was not in U1" if stray else f"{who(unlisted[0])} is in neither list")
        if len(keep) < self._threshold:
            raise self._refuse(f"only {len(keep)} survivors, fewer than the threshold {self._threshold}")
        answer = UnmaskResponse(self.name, {name: self._shares[name][0] for name in sorted(keep)},
                                {name: self._shares[name][1] for name in sorted(drop)})
        self._answer = (drop, keep, answer)
        return answer
