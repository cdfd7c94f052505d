"""A site whose clock differs from the coordinator's: certificates tolerate a few minutes' skew.

A certificate is issued "now" by the coordinator's clock and checked the way a TLS peer checks
it (cryptography's X.509 path validation) at the time the other party's clock shows.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from tffprod.security.certs import CLOCK_SKEW, init_ca, issue


@pytest.fixture(scope="module")
def issued(tmp_path_factory) -> tuple[x509.Certificate, x509.Certificate, datetime.datetime]:
    root = Path(tmp_path_factory.mktemp("skew"))
    ca = init_ca(root / "ca")
    issued_at = datetime.datetime.now(datetime.timezone.utc)
    coordinator = issue("coordinator", ca_dir=root / "ca", out_dir=root / "coordinator")
    load = lambda path: x509.load_pem_x509_certificate(Path(path).read_bytes())  # noqa: E731
    return load(ca.cert), load(coordinator.cert), issued_at


def _verify_at(ca: x509.Certificate, leaf: x509.Certificate, when: datetime.datetime) -> None:
    verifier = PolicyBuilder().store(Store([ca])).time(when).build_client_verifier()
    verifier.verify(leaf, [])


@pytest.mark.parametrize("offset", [datetime.timedelta(minutes=-4), datetime.timedelta(0),
                                    datetime.timedelta(days=30)])
def test_a_site_whose_clock_is_a_little_behind_or_ahead_accepts_a_fresh_certificate(issued, offset) -> None:
    ca, leaf, issued_at = issued
    _verify_at(ca, leaf, issued_at + offset)


def test_a_site_whose_clock_is_far_behind_refuses_it(issued) -> None:
    ca, leaf, issued_at = issued
    with pytest.raises(VerificationError):
        _verify_at(ca, leaf, issued_at - CLOCK_SKEW - datetime.timedelta(minutes=1))
