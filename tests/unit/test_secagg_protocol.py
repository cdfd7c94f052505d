"""One round of secure aggregation driven step by step: the coordinator learns exactly the survivors' sum, and
every step refuses what would let it learn more (forged keys, tampered or misrouted shares, late releases, unmask
requests that would reveal both masks of a participant)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tffprod.privacy.secagg import (Advertisement, Aggregator, EncryptedShare, Participant, SecAggError,
                                    UnmaskResponse, combine, sign_advertisement)
from tffprod.privacy.secagg.keys import RoundKeys
from tffprod.security.certs import init_ca, issue
from tests.unit.test_secagg_masks import assert_uniform

NAMES = [f"site-{i}" for i in range(5)]
CONTEXT = b"plan-1/round-4"


@dataclasses.dataclass
class Federation:
    ca_pem: bytes
    certs: dict[str, bytes]
    keys: dict[str, ec.EllipticCurvePrivateKey]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    root = tmp_path_factory.mktemp("federation")
    ca = init_ca(root / "ca")
    certs, keys = {}, {}
    for name in NAMES:
        files = issue(name, ca_dir=root / "ca", out_dir=root / "sites")
        certs[name] = files.cert.read_bytes()
        key = serialization.load_pem_private_key(Path(files.key).read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        keys[name] = key
    return Federation(ca.cert.read_bytes(), certs, keys)


@dataclasses.dataclass
class Round:
    fed: Federation
    participants: dict[str, Participant]
    agg: Aggregator
    threshold: int
    bits: int
    length: int

    def advertise(self, absent: Sequence[str] = ()) -> list[Advertisement]:
        for name, participant in self.participants.items():
            if name not in absent:
                self.agg.add_advertisement(participant.advertise())
        return self.agg.advertisements()

    def share(self, absent: Sequence[str] = ()) -> list[str]:
        """Steps 0 and 1; ``absent`` participants drop before sharing keys. Returns U1."""
        ads = self.advertise()
        for name, participant in self.participants.items():
            if name not in absent:
                self.agg.add_shares(name, participant.share_keys(ads, self.fed.certs, self.fed.ca_pem, self.threshold))
        u1 = self.agg.u1()
        for name in u1:
            self.participants[name].receive_shares(self.agg.shares_for(name))
        return u1

    def mask(self, inputs: dict[str, np.ndarray], dropped: Sequence[str] = ()) -> None:
        """Step 2: every member of U1 but ``dropped`` sends its masked input."""
        u1 = self.agg.u1()
        for name in u1:
            if name not in dropped:
                self.agg.add_masked(name, self.participants[name].masked_input(inputs[name], u1))

    def unmask(self, responders: Optional[int] = None) -> np.ndarray:
        """Step 3 with the first ``responders`` survivors (default: all)."""
        dropped, survivors = self.agg.begin_unmask()
        responses = [self.participants[name].unmask(dropped, survivors) for name in survivors[:responders]]
        return self.agg.finish(responses)

    def inputs(self, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {name: rng.integers(0, 2**self.bits, self.length, dtype=np.uint64) for name in self.participants}


def start(fed: Federation, n: int, *, threshold: Optional[int] = None, bits: int = 32, length: int = 64,
          context: bytes = CONTEXT) -> Round:
    names = NAMES[:n]
    threshold = threshold if threshold is not None else n // 2 + 1
    participants = {name: Participant(name, i, fed.keys[name], context, bits, length) for i, name in enumerate(names)}
    return Round(fed, participants, Aggregator(names, threshold, bits, length), threshold, bits, length)


def exact_sum(inputs: dict[str, np.ndarray], names: Sequence[str], bits: int) -> list[int]:
    return [sum(int(inputs[name][i]) for name in names) % 2**bits for i in range(len(inputs[names[0]]))]


@pytest.mark.parametrize("n", [3, 4, 5])
@pytest.mark.parametrize("drop", [None, "first", "middle", "last"])
def test_the_coordinator_gets_exactly_the_survivors_sum(fed: Federation, n: int, drop: Optional[str]) -> None:
    bits = {3: 62, 4: 17, 5: 40}[n]
    round_ = start(fed, n, bits=bits)
    u1 = round_.share()
    assert u1 == NAMES[:n]
    dropped = [] if drop is None else [NAMES[{"first": 0, "middle": n // 2, "last": n - 1}[drop]]]
    inputs = round_.inputs(seed=10 * n + len(dropped))
    round_.mask(inputs, dropped=dropped)  # the dropped one shared its keys, then never sent its masked input
    survivors = [name for name in u1 if name not in dropped]
    assert round_.agg.begin_unmask() == (dropped, survivors)
    total = round_.unmask(responders=round_.threshold if dropped else None)
    assert total.dtype == np.uint64 and [int(v) for v in total] == exact_sum(inputs, survivors, bits)


def test_a_participant_that_never_shared_keys_is_left_out_of_u1(fed: Federation) -> None:
    round_ = start(fed, 5, threshold=3)
    u1 = round_.share(absent=["site-2"])
    assert u1 == ["site-0", "site-1", "site-3", "site-4"]
    inputs = round_.inputs(seed=7)
    round_.mask(inputs, dropped=["site-4"])
    assert [int(v) for v in round_.unmask()] == exact_sum(inputs, ["site-0", "site-1", "site-3"], round_.bits)


def test_an_advertisement_the_coordinator_forged_or_replaced_is_refused(fed: Federation) -> None:
    round_ = start(fed, 3)
    ads = round_.advertise()
    site0 = round_.participants["site-0"]

    certs = {name: fed.certs[name] for name in NAMES[:3]}

    def share_keys(relayed: list[Advertisement]) -> None:
        site0.share_keys(relayed, certs, fed.ca_pem, 2)

    swapped_key = dataclasses.replace(ads[1], s_public=RoundKeys.generate().s_public)
    with pytest.raises(SecAggError, match="advertisement of 'site-1' refused: the signature does not verify"):
        share_keys([ads[0], swapped_key, ads[2]])
    resigned = sign_advertisement("site-1", 1, CONTEXT, RoundKeys.generate(), fed.keys["site-2"])
    with pytest.raises(SecAggError, match="advertisement of 'site-1' refused: the signature does not verify"):
        share_keys([ads[0], resigned, ads[2]])
    stale = Participant("site-0", 0, fed.keys["site-0"], CONTEXT, 32, 64).advertise()  # genuine, other keys
    with pytest.raises(SecAggError, match="participant 'site-0': its own advertisement is missing or altered"):
        share_keys([stale, ads[1], ads[2]])
    other_round = Participant("site-2", 2, fed.keys["site-2"], b"plan-1/round-3", 32, 64).advertise()
    with pytest.raises(SecAggError, match="'site-2' refused: it is for another round context"):
        share_keys([ads[0], ads[1], other_round])
    same_index = Participant("site-2", 1, fed.keys["site-2"], CONTEXT, 32, 64).advertise()
    with pytest.raises(SecAggError, match="'site-2' repeats a name or an index"):
        share_keys([ads[0], ads[1], same_index])
    with pytest.raises(SecAggError, match="no certificate for advertiser 'site-3'"):
        share_keys([*ads, Participant("site-3", 3, fed.keys["site-3"], CONTEXT, 32, 64).advertise()])
    with pytest.raises(SecAggError, match="at least 3 participants"):
        share_keys(ads[:2])
    with pytest.raises(SecAggError, match="threshold must be in 2..3"):
        site0.share_keys(ads, certs, fed.ca_pem, 1)
    share_keys(ads)  # nothing was kept from the refused calls
    with pytest.raises(SecAggError, match="already shared its keys"):
        share_keys(ads)


def _shared(fed: Federation) -> tuple[Round, dict[str, list[EncryptedShare]]]:
    round_ = start(fed, 3)
    ads = round_.advertise()
    for name, participant in round_.participants.items():
        round_.agg.add_shares(name, participant.share_keys(ads, fed.certs, fed.ca_pem, 2))
    return round_, {name: round_.agg.shares_for(name) for name in NAMES[:3]}


def test_a_tampered_or_misrouted_share_is_refused(fed: Federation) -> None:
    round_, routed = _shared(fed)
    site1 = round_.participants["site-1"]
    from_0 = next(share for share in routed["site-1"] if share.sender == "site-0")
    flipped = from_0.ciphertext[:5] + bytes([from_0.ciphertext[5] ^ 1]) + from_0.ciphertext[6:]
    for tampered in (dataclasses.replace(from_0, ciphertext=flipped), dataclasses.replace(from_0, nonce=bytes(12)),
                     dataclasses.replace(from_0, sender="site-2")):
        with pytest.raises(SecAggError, match="participant 'site-1': the share from '.*' does not decrypt"):
            site1.receive_shares([routed["site-1"][1], tampered])
    meant_for_2 = next(share for share in routed["site-2"] if share.sender == "site-0")
    with pytest.raises(SecAggError, match="share from 'site-0' is addressed to 'site-2'"):
        site1.receive_shares([meant_for_2])
    with pytest.raises(SecAggError, match="participant 'site-1': the share from 'site-0' does not decrypt"):
        site1.receive_shares([dataclasses.replace(meant_for_2, recipient="site-1")])
    with pytest.raises(SecAggError, match="from 'site-1', which has no verified advertisement"):
        site1.receive_shares([dataclasses.replace(from_0, sender="site-1")])
    site1.receive_shares(routed["site-1"])  # the genuine shares still go through
    site1.receive_shares(routed["site-1"])  # and a repeated delivery of the same shares is harmless
    with pytest.raises(SecAggError, match="a second, different share from 'site-0'"):
        site1.receive_shares([_reshared(round_, "site-0", "site-1")])


def _reshared(round_: Round, sender: str, recipient: str) -> EncryptedShare:
    """A genuine-looking second share: ``sender``'s shares re-encrypted for ``recipient`` with other values."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from tffprod.privacy.secagg.keys import canonical, shared_seed

    sender_keys = round_.participants[sender]._keys  # the test plays a participant that shares twice
    ad = next(ad for ad in round_.agg.advertisements() if ad.name == recipient)
    key = shared_seed(sender_keys.c_private, ad.c_public, CONTEXT, (sender, recipient), purpose=b"share-encryption")
    sealed = AESGCM(key).encrypt(bytes(12), (1).to_bytes(66, "big") * 2,
                                 canonical(b"tffprod-secagg-v1 share", CONTEXT, sender.encode(), recipient.encode()))
    return EncryptedShare(sender, recipient, bytes(12), sealed)


def test_the_coordinator_refuses_mislabelled_shares_and_late_ones(fed: Federation) -> None:
    round_ = start(fed, 3)
    ads = round_.advertise()
    shares = round_.participants["site-0"].share_keys(ads, fed.certs, fed.ca_pem, 2)
    swapped = {"site-1": shares["site-2"], "site-2": shares["site-1"]}
    with pytest.raises(SecAggError, match="'site-0': a share is labelled with another sender or recipient"):
        round_.agg.add_shares("site-0", swapped)
    with pytest.raises(SecAggError, match="'site-0': its shares do not go to exactly the other advertisers"):
        round_.agg.add_shares("site-0", {"site-1": shares["site-1"]})
    round_.agg.add_shares("site-0", shares)
    for name in ("site-1", "site-2"):
        round_.agg.add_shares(name, round_.participants[name].share_keys(ads, fed.certs, fed.ca_pem, 2))
    assert round_.agg.u1() == NAMES[:3]
    with pytest.raises(SecAggError, match="'site-0': shares arrive .* or late"):
        round_.agg.add_shares("site-0", shares)


def test_a_masked_input_after_the_unmask_step_began_is_a_late_release(fed: Federation) -> None:
    round_ = start(fed, 4)
    round_.share()
    inputs = round_.inputs(seed=3)
    round_.mask(inputs, dropped=["site-3"])
    assert round_.agg.begin_unmask() == (["site-3"], ["site-0", "site-1", "site-2"])
    late = round_.participants["site-3"].masked_input(inputs["site-3"], NAMES[:4])
    with pytest.raises(SecAggError, match="participant 'site-3': late release"):
        round_.agg.add_masked("site-3", late)
    total = round_.unmask()
    with pytest.raises(SecAggError, match="participant 'site-3': late release"):
        round_.agg.add_masked("site-3", late)
    assert [int(v) for v in total] == exact_sum(inputs, NAMES[:3], round_.bits)


def test_unmask_refuses_requests_that_would_reveal_both_masks_of_a_participant(fed: Federation) -> None:
    round_ = start(fed, 5)
    round_.share()
    round_.mask(round_.inputs(seed=5))  # everyone sent a masked input
    p = round_.participants
    everyone, others = NAMES[:5], NAMES[:3] + NAMES[4:]
    with pytest.raises(SecAggError, match="participant 'site-0': 'site-1' is in both the dropped and the survivor"):
        p["site-0"].unmask(["site-1"], everyone)
    with pytest.raises(SecAggError, match="participant 'site-3': asked for the share of its own s key"):
        p["site-3"].unmask(["site-3"], others)
    with pytest.raises(SecAggError, match="'site-0': 'site-4' is in neither list"):
        p["site-0"].unmask([], NAMES[:4])
    with pytest.raises(SecAggError, match="'site-0': 'site-9' was not in U1"):
        p["site-0"].unmask(["site-9"], everyone)
    with pytest.raises(SecAggError, match="'site-0': only 2 survivors, fewer than the threshold 3"):
        p["site-0"].unmask(NAMES[2:], NAMES[:2])
    with pytest.raises(SecAggError, match="duplicates"):
        p["site-0"].unmask([], everyone + ["site-0"])
    # A lying coordinator tells site-0 and site-1 that site-3 dropped and the others that it survived ...
    told_dropped = [p[name].unmask(["site-3"], others) for name in ("site-0", "site-1")]
    told_survived = [p[name].unmask([], everyone) for name in ("site-2", "site-4", "site-3")]
    assert all(set(r.s_shares) == {"site-3"} for r in told_dropped)
    assert all("site-3" in r.b_shares for r in told_survived)
    assert p["site-0"].unmask(["site-3"], others) == told_dropped[0]  # the same question, the same answer
    # ... but nobody answers the other question as well: the coordinator holds 3 shares of site-3's b (its
    # masked input stays masked by its pairwise masks) and only 2 of its s key, one short of the threshold.
    with pytest.raises(SecAggError, match="participant 'site-0': asked for the b share of 'site-3', which it was "
                                          "told dropped"):
        p["site-0"].unmask([], everyone)
    with pytest.raises(SecAggError, match="participant 'site-2': asked for the s-key share of 'site-3', which it "
                                          "was told survived"):
        p["site-2"].unmask(["site-3"], others)
    with pytest.raises(SecAggError, match="'site-4': it has already answered the unmask step with other lists"):
        p["site-4"].unmask([], NAMES[1:5])
    s_shares_of_site3 = {NAMES.index(r.name) + 1: r.s_shares["site-3"] for r in told_dropped}
    with pytest.raises(SecAggError, match="2 shares cannot recover a secret shared 3-of-n"):
        combine(s_shares_of_site3, 3)


def test_unmask_and_masked_input_refuse_out_of_order_or_bad_requests(fed: Federation) -> None:
    round_ = start(fed, 3, bits=8, length=4)
    site0 = round_.participants["site-0"]
    with pytest.raises(SecAggError, match="before it shared its keys"):
        site0.masked_input(np.zeros(4, dtype=np.uint64), NAMES[:3])
    round_.share()
    with pytest.raises(SecAggError, match="'site-0': asked to unmask before it sent its masked input"):
        site0.unmask([], NAMES[:3])
    bad_inputs = [(np.zeros(5, dtype=np.uint64), r"shape \(5,\)"), (np.zeros(4, dtype=np.int64), "not a numpy uint64"),
                  (np.array([0, 1, 256, 3], dtype=np.uint64), r"entries outside 0..2\*\*8-1")]
    for values, match in bad_inputs:
        with pytest.raises(SecAggError, match=f"participant 'site-0': the input .*{match}"):
            site0.masked_input(values, NAMES[:3])
    with pytest.raises(SecAggError, match="'site-0': U1 lists 'site-3', which sent it no share"):
        site0.masked_input(np.zeros(4, dtype=np.uint64), NAMES[:4])
    with pytest.raises(SecAggError, match="'site-0': it is not in U1"):
        site0.masked_input(np.zeros(4, dtype=np.uint64), NAMES[1:3])
    with pytest.raises(SecAggError, match="'site-0': U1 has 1 participants, fewer than the threshold 2"):
        site0.masked_input(np.zeros(4, dtype=np.uint64), NAMES[:1])
    site0.masked_input(np.zeros(4, dtype=np.uint64), NAMES[:3])
    with pytest.raises(SecAggError, match="or a second time"):
        site0.masked_input(np.zeros(4, dtype=np.uint64), NAMES[:3])
    with pytest.raises(SecAggError, match="after it sent its masked input"):
        site0.receive_shares([])


def test_the_coordinator_refuses_bad_rounds_and_bad_messages(fed: Federation) -> None:
    with pytest.raises(SecAggError, match="at least 3 participants, got 2"):
        Aggregator(NAMES[:2], 2, 32, 8)
    for n, threshold in ((4, 2), (5, 2), (4, 5), (3, 0)):
        with pytest.raises(SecAggError, match=f"threshold must be in {n // 2 + 1}..{n}"):
            Aggregator(NAMES[:n], threshold, 32, 8)
    with pytest.raises(SecAggError, match="repeat"):
        Aggregator(["a", "b", "a"], 2, 32, 8)
    round_ = start(fed, 4)
    agg, p = round_.agg, round_.participants
    with pytest.raises(SecAggError, match="'site-1': advertises index 2, expected 1"):
        agg.add_advertisement(Participant("site-1", 2, fed.keys["site-1"], CONTEXT, 32, 64).advertise())
    agg.add_advertisement(p["site-0"].advertise())
    with pytest.raises(SecAggError, match="'site-0': not a participant of this round, or advertised twice"):
        agg.add_advertisement(p["site-0"].advertise())
    with pytest.raises(SecAggError, match="'site-1': advertises keys for another round context"):
        agg.add_advertisement(Participant("site-1", 1, fed.keys["site-1"], b"other", 32, 64).advertise())
    with pytest.raises(SecAggError, match="only 1 participants advertised keys"):
        agg.advertisements()
    ads = round_.advertise(absent=["site-0"])
    with pytest.raises(SecAggError, match="'site-4': late advertisement"):
        agg.add_advertisement(Participant("site-4", 4, fed.keys["site-4"], CONTEXT, 32, 64).advertise())
    for name in NAMES[:4]:
        agg.add_shares(name, p[name].share_keys(ads, fed.certs, fed.ca_pem, 3))
    for name in agg.u1():
        p[name].receive_shares(agg.shares_for(name))
    inputs = round_.inputs(seed=11)
    with pytest.raises(SecAggError, match="finish before the unmask step began"):
        agg.finish([])
    with pytest.raises(SecAggError, match="'site-0': the masked input has shape"):
        agg.add_masked("site-0", np.zeros(3, dtype=np.uint64))
    round_.mask(inputs, dropped=["site-2", "site-3"])
    with pytest.raises(SecAggError, match="'site-0': a masked input from a participant not in U1, or a second one"):
        agg.add_masked("site-0", np.zeros(64, dtype=np.uint64))
    with pytest.raises(SecAggError, match="only 2 masked inputs, fewer than the threshold 3"):
        agg.begin_unmask()
    agg.add_masked("site-2", p["site-2"].masked_input(inputs["site-2"], agg.u1()))
    dropped, survivors = agg.begin_unmask()
    responses = [p[name].unmask(dropped, survivors) for name in survivors]
    with pytest.raises(SecAggError, match="only 2 unmask responses, fewer than the threshold 3"):
        agg.finish(responses[:2])
    with pytest.raises(SecAggError, match="'site-3': an unmask response from a non-survivor"):
        agg.finish([*responses, UnmaskResponse("site-3", {}, {})])
    with pytest.raises(SecAggError, match="'site-1': its unmask response does not answer the lists"):
        agg.finish([responses[0], dataclasses.replace(responses[1], s_shares={}), responses[2]])
    total = agg.finish(responses)
    assert [int(v) for v in total] == exact_sum(inputs, survivors, round_.bits)
    with pytest.raises(SecAggError, match="or a second time"):
        agg.finish(responses)


@pytest.mark.parametrize("which", ["b", "s"])
def test_a_tampered_unmask_share_is_detected_not_silently_summed(fed: Federation, which: str) -> None:
    round_ = start(fed, 5)
    round_.share()
    round_.mask(round_.inputs(seed=13), dropped=["site-1"])
    dropped, survivors = round_.agg.begin_unmask()
    responses = [round_.participants[name].unmask(dropped, survivors) for name in survivors]
    first = responses[0]
    if which == "b":
        responses[0] = dataclasses.replace(first, b_shares={**first.b_shares, "site-4": first.b_shares["site-4"] + 1})
        match = "'site-4': its self-mask seed cannot be reconstructed"
    else:
        responses[0] = dataclasses.replace(first, s_shares={"site-1": first.s_shares["site-1"] + 1})
        match = "'site-1': its s key cannot be reconstructed"
    with pytest.raises(SecAggError, match=match):
        round_.agg.finish(responses)  # 4 responses for a threshold of 3: the spare share exposes the bad one
    if which == "s":  # exactly 3: a wrong s key is caught against the advertised public key
        with pytest.raises(SecAggError, match="'site-1': the reconstructed s key does not match its advertised"):
            round_.agg.finish(responses[:3])
    # (A wrong b from exactly t shares goes unnoticed: b has no commitment. Dishonest sites are out of scope.)


@pytest.mark.parametrize(("bits", "constant"), [(8, 0), (16, 12345), (62, 2**62 - 1)])
def test_a_single_masked_input_of_a_constant_vector_is_uniform(fed: Federation, bits: int, constant: int) -> None:
    # Fresh keys and seeds each run: a uniform vector fails the check with probability at most 1e-6.
    round_ = start(fed, 3, bits=bits, length=1 << 15)
    u1 = round_.share()
    values = np.full(round_.length, constant, dtype=np.uint64)
    for name in u1:
        masked = round_.participants[name].masked_input(values, u1)
        assert_uniform(masked, bits)
        assert np.count_nonzero(masked == values) < round_.length // 100
