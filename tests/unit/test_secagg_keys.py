"""Secure aggregation keys: a signed advertisement verifies only from the CA's certificate for its name, for
its round, untampered; both ends of a pair derive the same seed, and nothing else does."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from tffprod.privacy.secagg import (Advertisement, RoundKeys, SecAggError, shared_seed, sign_advertisement,
                                    verify_advertisement)
from tffprod.security.certs import init_ca, issue

CONTEXT = b"plan-7/round-3"
UTC = datetime.timezone.utc


@dataclasses.dataclass
class Pki:
    ca_pem: bytes
    certs: dict[str, bytes]
    keys: dict[str, ec.EllipticCurvePrivateKey]
    rogue_ca_pem: bytes
    rogue_cert: bytes  # "site-a" issued by another CA
    rogue_key: ec.EllipticCurvePrivateKey
    expired_cert: bytes  # "site-c", valid only in 2020
    expired_key: ec.EllipticCurvePrivateKey


def _load(files) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    key = serialization.load_pem_private_key(Path(files.key).read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Path(files.cert).read_bytes(), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = init_ca(root / "ca")
    issued = {name: _load(issue(name, ca_dir=root / "ca", out_dir=root / "sites")) for name in ("site-a", "site-b")}
    rogue = init_ca(root / "rogue-ca")
    rogue_cert, rogue_key = _load(issue("site-a", ca_dir=root / "rogue-ca", out_dir=root / "rogue"))
    expired_cert, expired_key = _load(issue("site-c", ca_dir=root / "ca", out_dir=root / "old",
                                            not_before=datetime.datetime(2020, 1, 1),
                                            not_after=datetime.datetime(2020, 12, 31)))
    return Pki(ca.cert.read_bytes(), {n: c for n, (c, _) in issued.items()}, {n: k for n, (_, k) in issued.items()},
               rogue.cert.read_bytes(), rogue_cert, rogue_key, expired_cert, expired_key)


def _advertise(pki: Pki, name: str = "site-a", index: int = 0, context: bytes = CONTEXT) -> Advertisement:
    return sign_advertisement(name, index, context, RoundKeys.generate(), pki.keys[name])


def _refused(ad: Advertisement, cert: bytes, ca: bytes, **kwargs) -> str:
    with pytest.raises(SecAggError) as caught:
        verify_advertisement(ad, cert, ca, kwargs.pop("context", CONTEXT), **kwargs)
    message = str(caught.value)
    assert "\n" not in message and repr(ad.name) in message
    for secret in (ad.s_public, ad.c_public, ad.signature):
        assert secret.hex() not in message and repr(secret) not in message
    return message


def test_a_genuine_advertisement_verifies_and_carries_raw_public_keys(pki: Pki) -> None:
    keys = RoundKeys.generate()
    ad = sign_advertisement("site-a", 2, CONTEXT, keys, pki.keys["site-a"])
    assert (ad.name, ad.index, ad.context) == ("site-a", 2, CONTEXT)
    assert ad.s_public == keys.s_private.public_key().public_bytes_raw() and len(ad.s_public) == 32
    assert ad.c_public == keys.c_private.public_key().public_bytes_raw() and ad.c_public != ad.s_public
    verify_advertisement(ad, pki.certs["site-a"], pki.ca_pem, CONTEXT)


def test_a_certificate_from_another_ca_is_refused(pki: Pki) -> None:
    ad = sign_advertisement("site-a", 0, CONTEXT, RoundKeys.generate(), pki.rogue_key)
    verify_advertisement(ad, pki.rogue_cert, pki.rogue_ca_pem, CONTEXT)  # fine under its own CA
    assert "not issued by the federation CA" in _refused(ad, pki.rogue_cert, pki.ca_pem)


def test_an_advertisement_under_another_name_is_refused(pki: Pki) -> None:
    # site-a signs an advertisement claiming to be site-b: with its own certificate the name does not match,
    # with site-b's certificate the signature does not verify.
    forged = sign_advertisement("site-b", 1, CONTEXT, RoundKeys.generate(), pki.keys["site-a"])
    assert "issued to another name" in _refused(forged, pki.certs["site-a"], pki.ca_pem)
    assert "signature does not verify" in _refused(forged, pki.certs["site-b"], pki.ca_pem)


@pytest.mark.parametrize("field", ["s_public", "c_public", "index", "name_case", "signature"])
def test_a_tampered_advertisement_is_refused(pki: Pki, field: str) -> None:
    ad = _advertise(pki)
    other = _advertise(pki)
    changes = {"s_public": {"s_public": other.s_public}, "c_public": {"c_public": other.c_public},
               "index": {"index": 1}, "name_case": {"name": "Site-a"}, "signature": {"signature": other.signature}}
    tampered = dataclasses.replace(ad, **changes[field])
    message = _refused(tampered, pki.certs["site-a"], pki.ca_pem)
    assert ("signature does not verify" in message) or (field == "name_case" and "another name" in message)


def test_an_advertisement_for_another_round_is_refused(pki: Pki) -> None:
    ad = _advertise(pki, context=b"plan-7/round-2")
    assert "another round context" in _refused(ad, pki.certs["site-a"], pki.ca_pem)
    # Relabelling the context breaks the signature.
    relabelled = dataclasses.replace(ad, context=CONTEXT)
    assert "signature does not verify" in _refused(relabelled, pki.certs["site-a"], pki.ca_pem)


def test_a_certificate_outside_its_validity_is_refused(pki: Pki) -> None:
    ad = sign_advertisement("site-c", 0, CONTEXT, RoundKeys.generate(), pki.expired_key)
    assert "its certificate is not valid at" in _refused(ad, pki.expired_cert, pki.ca_pem)
    # In 2020 the certificate was valid, but the CA (made today) was not yet.
    assert "the CA certificate is not valid at" in _refused(ad, pki.expired_cert, pki.ca_pem,
                                                            now=datetime.datetime(2020, 6, 1, tzinfo=UTC))
    genuine = _advertise(pki)
    verify_advertisement(genuine, pki.certs["site-a"], pki.ca_pem, CONTEXT, now=datetime.datetime.now(UTC))
    assert "its certificate is not valid at" in _refused(genuine, pki.certs["site-a"], pki.ca_pem,
                                                         now=datetime.datetime(2100, 1, 1, tzinfo=UTC))


def test_malformed_certificates_keys_and_a_non_ca_root_are_refused(pki: Pki) -> None:
    ad = _advertise(pki)
    assert "not a PEM certificate" in _refused(ad, b"-----BEGIN CERTIFICATE-----\nnope\n", pki.ca_pem)
    assert "not a PEM certificate" in _refused(ad, pki.certs["site-a"], b"")
    assert "not a CA certificate" in _refused(ad, pki.certs["site-a"], pki.certs["site-b"])
    assert "32 raw bytes" in _refused(dataclasses.replace(ad, s_public=ad.s_public[:31]), pki.certs["site-a"],
                                      pki.ca_pem)


def test_only_an_ecdsa_p256_key_signs_an_advertisement(pki: Pki) -> None:
    with pytest.raises(SecAggError, match="'site-a'.*not an ECDSA P-256 private key"):
        sign_advertisement("site-a", 0, CONTEXT, RoundKeys.generate(), ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(SecAggError, match="invalid name or index"):
        sign_advertisement("site-a", -1, CONTEXT, RoundKeys.generate(), pki.keys["site-a"])


def test_both_ends_derive_the_same_seed_and_nobody_else_does() -> None:
    a, b, c = RoundKeys.generate(), RoundKeys.generate(), RoundKeys.generate()
    ab = shared_seed(a.s_private, b.s_public, CONTEXT, ("site-a", "site-b"))
    assert len(ab) == 32
    assert shared_seed(b.s_private, a.s_public, CONTEXT, ("site-b", "site-a")) == ab
    assert shared_seed(b.s_private, a.s_private.public_key(), CONTEXT, ("site-b", "site-a")) == ab
    others = {
        shared_seed(a.s_private, c.s_public, CONTEXT, ("site-a", "site-c")),  # another peer
        shared_seed(a.s_private, b.s_public, b"plan-7/round-4", ("site-a", "site-b")),  # another round
        shared_seed(a.s_private, b.s_public, CONTEXT, ("site-a", "site-x")),  # another name
        shared_seed(a.s_private, b.s_public, CONTEXT, ("site-a", "site-b"), purpose=b"share-encryption"),
        shared_seed(a.c_private, b.c_public, CONTEXT, ("site-a", "site-b")),  # the other key pair
    }
    assert ab not in others and len(others) == 5


def test_a_seed_needs_two_names_and_a_sound_public_key() -> None:
    a, b = RoundKeys.generate(), RoundKeys.generate()
    with pytest.raises(SecAggError, match="two different names"):
        shared_seed(a.s_private, b.s_public, CONTEXT, ("site-a", "site-a"))
    with pytest.raises(SecAggError, match="'site-b'.*malformed"):
        shared_seed(a.s_private, b"\x01" * 31, CONTEXT, ("site-a", "site-b"))
    with pytest.raises(SecAggError, match="low-order"):
        shared_seed(a.s_private, bytes(32), CONTEXT, ("site-a", "site-b"))


def test_round_keys_are_fresh_each_time() -> None:
    first, second = RoundKeys.generate(), RoundKeys.generate()
    assert len({first.s_public, first.c_public, second.s_public, second.c_public}) == 4
    assert isinstance(first.s_private, x25519.X25519PrivateKey)
