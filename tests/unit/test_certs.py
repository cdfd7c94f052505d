"""Certificates: the library, the ``tffprod certs`` commands, and real mutual TLS with gRPC.

The TLS tests start a real ``grpc.server`` on 127.0.0.1 with the certificates
tffprod issues, so they prove that grpcio accepts ECDSA P-256 keys and that
the checks gateways rely on (CA, expiry, host name, client identity) hold.
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import stat
import subprocess
import sys
from concurrent import futures
from pathlib import Path
from typing import Iterator, Optional

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from tffprod.errors import CertError
from tffprod.security.certs import IssuedFiles, describe, identity_of, init_ca, issue
from tffprod.errors import TffprodError

UTC = datetime.timezone.utc
TIMEOUT = 5  # seconds: bounds every wait on gRPC


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, IssuedFiles]:
    """A CA with a coordinator and a site, a second CA with an intruder, and odd certs for the TLS tests.

    Shared by the module: tests must not write into these directories.
    """
    root = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(UTC)
    return {
        "ca": init_ca(root / "ca"),
        "other-ca": init_ca(root / "other-ca", name="other-ca"),
        "coordinator": issue("coordinator", ca_dir=root / "ca", out_dir=root / "coordinator"),
        "site": issue("hospital-a", ca_dir=root / "ca", out_dir=root / "hospital-a"),
        "intruder": issue("intruder", ca_dir=root / "other-ca", out_dir=root / "intruder"),
        "expired": issue("old-site", ca_dir=root / "ca", out_dir=root / "old-site",
                         not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1)),
        "elsewhere": issue("elsewhere", ca_dir=root / "ca", out_dir=root / "elsewhere", hosts=["elsewhere.example"]),
    }


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in ``directory`` with its bytes and modification time (to prove nothing was touched)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}"
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# ---------------------------------------------------------------- library: the CA


def test_cert_error_is_a_tffprod_error_with_its_own_exit_code() -> None:
    assert issubclass(CertError, TffprodError)
    assert CertError.exit_code == 7


def test_init_ca_writes_a_private_key_and_a_self_signed_ca_cert(tmp_path: Path) -> None:
    files = init_ca(tmp_path / "new" / "ca", name="acme-ca", days=10)

    assert files.key == tmp_path / "new" / "ca" / "ca.key"
    assert files.cert == files.ca_cert == tmp_path / "new" / "ca" / "ca.crt"
    assert mode(files.key) == 0o600
    cert = load_cert(files.cert)
    assert identity_of(files.cert.read_bytes()) == "acme-ca"
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    left = cert.not_valid_after_utc - datetime.datetime.now(UTC)
    assert datetime.timedelta(days=9) < left <= datetime.timedelta(days=10)
    key = load_pem_private_key(files.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


@pytest.mark.parametrize("existing", ["ca.key", "ca.crt"])
def test_init_ca_refuses_to_overwrite_and_leaves_files_untouched(tmp_path: Path, existing: str) -> None:
    init_ca(tmp_path)
    if existing == "ca.key":
        (tmp_path / "ca.crt").unlink()
    else:
        (tmp_path / "ca.key").unlink()
    before = snapshot(tmp_path)

    with pytest.raises(CertError, match="refusing to overwrite"):
        init_ca(tmp_path)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kwargs", [{"days": 0}, {"days": -5}, {"name": ""}, {"name": "x" * 65}])
def test_init_ca_rejects_bad_arguments_before_writing(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(CertError):
        init_ca(tmp_path / "ca", **kwargs)
    assert not (tmp_path / "ca").exists()


# ---------------------------------------------------------------- library: issued certs


def test_issue_writes_a_key_and_a_cert_for_both_tls_roles(pki: dict[str, IssuedFiles]) -> None:
    files = pki["site"]
    assert files.key.name == "hospital-a.key" and files.cert.name == "hospital-a.crt"
    assert files.ca_cert == files.key.parent / "ca.crt"
    assert files.ca_cert.read_bytes() == pki["ca"].cert.read_bytes()
    assert mode(files.key) == 0o600

    cert, ca = load_cert(files.cert), load_cert(pki["ca"].cert)
    cert.verify_directly_issued_by(ca)
    assert identity_of(files.cert.read_bytes()) == "hospital-a"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    key = load_pem_private_key(files.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert key.public_key() == cert.public_key()


def test_issue_takes_hosts_days_and_an_explicit_validity_window(pki: dict[str, IssuedFiles], tmp_path: Path) -> None:
    ca_dir = pki["ca"].key.parent
    files = issue("coord-1", ca_dir=ca_dir, out_dir=tmp_path, hosts=["fl.example.org", "10.0.0.7", "::1"], days=30)
    info = describe(files.cert)
    assert info["sans"] == ["fl.example.org", "10.0.0.7", "::1"]
    left = datetime.datetime.fromisoformat(info["not_after"]) - datetime.datetime.now(UTC)
    assert datetime.timedelta(days=29) < left <= datetime.timedelta(days=30)

    start, end = datetime.datetime(2020, 1, 1, tzinfo=UTC), datetime.datetime(2020, 2, 1)  # naive means UTC
    old = describe(issue("coord-2", ca_dir=ca_dir, out_dir=tmp_path, not_before=start, not_after=end).cert)
    assert (old["not_before"], old["not_after"]) == ("2020-01-01T00:00:00+00:00", "2020-02-01T00:00:00+00:00")


def test_issue_puts_several_parties_into_one_directory(pki: dict[str, IssuedFiles], tmp_path: Path) -> None:
    ca_dir = pki["ca"].key.parent
    a = issue("site-a", ca_dir=ca_dir, out_dir=tmp_path)
    b = issue("site-b", ca_dir=ca_dir, out_dir=tmp_path)
    assert a.ca_cert == b.ca_cert
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ca.crt", "site-a.crt", "site-a.key", "site-b.crt", "site-b.key"]


def test_issue_into_the_ca_directory_keeps_its_ca_crt(tmp_path: Path) -> None:
    ca = init_ca(tmp_path)
    before = ca.cert.read_bytes()
    files = issue("site-c", ca_dir=tmp_path, out_dir=tmp_path)
    assert files.ca_cert == ca.cert and ca.cert.read_bytes() == before


def test_issue_refuses_to_overwrite_and_leaves_files_untouched(pki: dict[str, IssuedFiles], tmp_path: Path) -> None:
    ca_dir = pki["ca"].key.parent
    issue("site-a", ca_dir=ca_dir, out_dir=tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(CertError, match="refusing to overwrite"):
        issue("site-a", ca_dir=ca_dir, out_dir=tmp_path, hosts=["other.example"])
    assert snapshot(tmp_path) == before

    (tmp_path / "site-a.crt").unlink()  # only the key left: still refused
    before = snapshot(tmp_path)
    with pytest.raises(CertError, match="site-a.key"):
        issue("site-a", ca_dir=ca_dir, out_dir=tmp_path)
    assert snapshot(tmp_path) == before


def test_issue_refuses_a_directory_holding_another_cas_certificate(pki: dict[str, IssuedFiles], tmp_path: Path) -> None:
    issue("site-a", ca_dir=pki["other-ca"].key.parent, out_dir=tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(CertError, match="different CA certificate"):
        issue("site-b", ca_dir=pki["ca"].key.parent, out_dir=tmp_path)
    assert snapshot(tmp_path) == before


def test_issue_rejects_a_bad_ca_directory(pki: dict[str, IssuedFiles], tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(CertError, match="does not exist"):
        issue("site-a", ca_dir=tmp_path / "missing", out_dir=out)

    (tmp_path / "empty").mkdir()
    with pytest.raises(CertError, match="ca.key is missing"):
        issue("site-a", ca_dir=tmp_path / "empty", out_dir=out)

    mixed = tmp_path / "mixed"  # a key from one CA with the certificate of another
    mixed.mkdir()
    (mixed / "ca.key").write_bytes(pki["ca"].key.read_bytes())
    (mixed / "ca.crt").write_bytes(pki["other-ca"].cert.read_bytes())
    with pytest.raises(CertError, match="does not belong"):
        issue("site-a", ca_dir=mixed, out_dir=out)

    leaf = tmp_path / "leaf"  # a site's key and cert are not a CA
    leaf.mkdir()
    (leaf / "ca.key").write_bytes(pki["site"].key.read_bytes())
    (leaf / "ca.crt").write_bytes(pki["site"].cert.read_bytes())
    with pytest.raises(CertError, match="not a CA certificate"):
        issue("site-a", ca_dir=leaf, out_dir=out)

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "ca.key").write_text("not a key")
    (garbage / "ca.crt").write_bytes(pki["ca"].cert.read_bytes())
    with pytest.raises(CertError, match="not an unencrypted PEM private key"):
        issue("site-a", ca_dir=garbage, out_dir=out)
    assert not out.exists()


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("../escape", {}, "invalid name"),
        ("", {}, "invalid name"),
        ("ca", {}, "reserved"),
        ("a" * 65, {}, "invalid name"),
        ("site-a", {"hosts": []}, "at least one host"),
        ("site-a", {"hosts": ["bad host"]}, "invalid host"),
        ("site-a", {"hosts": ["bücher.example"]}, "invalid host"),
        ("site-a", {"days": 0}, "days"),
        ("site-a", {"not_before": datetime.datetime(2030, 1, 1), "not_after": datetime.datetime(2029, 1, 1)},
         "before it starts"),
    ],
)
def test_issue_rejects_bad_arguments_before_writing(pki: dict[str, IssuedFiles], tmp_path: Path,
                                                    name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(CertError, match=match):
        issue(name, ca_dir=pki["ca"].key.parent, out_dir=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_identity_of_and_describe(pki: dict[str, IssuedFiles]) -> None:
    assert identity_of(pki["coordinator"].cert.read_bytes()) == "coordinator"
    info = describe(pki["site"].cert)
    cert = load_cert(pki["site"].cert)
    assert info["subject"] == "hospital-a" and info["issuer"] == "tffprod-ca"
    assert info["sans"] == ["localhost", "127.0.0.1"]
    assert info["is_ca"] is False and describe(pki["ca"].cert)["is_ca"] is True
    assert datetime.datetime.fromisoformat(info["not_before"]) == cert.not_valid_before_utc
    assert datetime.datetime.fromisoformat(info["not_after"]) == cert.not_valid_after_utc
    assert info["sha256"] == cert.fingerprint(hashes.SHA256()).hex()
    assert len(info["sha256"]) == 64
    json.dumps(info)  # JSON-ready


def test_identity_of_and_describe_reject_what_is_not_a_certificate(pki: dict[str, IssuedFiles], tmp_path: Path) -> None:
    with pytest.raises(CertError, match="not a PEM certificate"):
        identity_of(b"hello")
    with pytest.raises(CertError, match="not a PEM certificate"):
        describe(pki["site"].key)
    with pytest.raises(CertError, match="cannot read"):
        describe(tmp_path / "missing.crt")


def test_the_certs_module_does_not_import_tensorflow() -> None:
    code = "import sys, tffprod.security.certs; sys.exit(any(m.startswith('tensorflow') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# ---------------------------------------------------------------- CLI


def test_cli_init_issue_show(run_cli, tmp_path: Path) -> None:
    ca_dir, out = tmp_path / "ca", tmp_path / "site"
    result = run_cli("certs", "init", "--out", ca_dir, "--name", "acme-ca")
    assert result.exit_code == 0, result.output
    assert "ca.key" in result.stdout and mode(ca_dir / "ca.key") == 0o600

    result = run_cli("certs", "issue", "hospital-a", "--ca", ca_dir, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "key": str(out / "hospital-a.key"), "cert": str(out / "hospital-a.crt"), "ca_cert": str(out / "ca.crt"),
    }
    assert mode(out / "hospital-a.key") == 0o600

    result = run_cli("certs", "show", out / "hospital-a.crt")
    assert result.exit_code == 0, result.output
    assert "hospital-a" in result.stdout and "acme-ca" in result.stdout and "localhost, 127.0.0.1" in result.stdout

    result = run_cli("certs", "show", out / "hospital-a.crt", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == describe(out / "hospital-a.crt")


def test_cli_issue_takes_hosts_and_days(run_cli, pki: dict[str, IssuedFiles], tmp_path: Path) -> None:
    result = run_cli("certs", "issue", "coord", "--ca", pki["ca"].key.parent, "--out", tmp_path,
                     "--host", "fl.example.org", "--host", "10.1.2.3", "--days", "7", "--json")
    assert result.exit_code == 0, result.output
    info = describe(tmp_path / "coord.crt")
    assert info["sans"] == ["fl.example.org", "10.1.2.3"]
    assert datetime.datetime.fromisoformat(info["not_after"]) - datetime.datetime.now(UTC) <= datetime.timedelta(days=7)


def test_cli_init_json_and_refusal_to_overwrite(run_cli, tmp_path: Path) -> None:
    result = run_cli("certs", "init", "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["key"] == str(tmp_path / "ca.key")
    before = snapshot(tmp_path)

    line = one_line_error(run_cli("certs", "init", "--out", tmp_path))
    assert "refusing to overwrite" in line
    assert run_cli("certs", "init", "--out", tmp_path).exit_code == 7
    assert snapshot(tmp_path) == before


def test_cli_issue_refuses_to_overwrite(run_cli, pki: dict[str, IssuedFiles], tmp_path: Path) -> None:
    ca_dir = pki["ca"].key.parent
    assert run_cli("certs", "issue", "site-a", "--ca", ca_dir, "--out", tmp_path).exit_code == 0
    before = snapshot(tmp_path)
    result = run_cli("certs", "issue", "site-a", "--ca", ca_dir, "--out", tmp_path)
    assert "refusing to overwrite" in one_line_error(result)
    assert result.exit_code == 7
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("ca", ["missing", "empty"])
def test_cli_issue_with_a_bad_ca_directory_is_a_one_line_error(run_cli, tmp_path: Path, ca: str) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli("certs", "issue", "site-a", "--ca", tmp_path / ca, "--out", tmp_path / "out")
    line = one_line_error(result)
    assert str(tmp_path / ca) in line
    assert result.exit_code == 7
    assert not (tmp_path / "out").exists()


def test_cli_show_of_a_missing_or_bad_file_is_a_one_line_error(run_cli, pki: dict[str, IssuedFiles],
                                                               tmp_path: Path) -> None:
    assert "cannot read" in one_line_error(run_cli("certs", "show", tmp_path / "missing.crt"))
    assert "not a PEM certificate" in one_line_error(run_cli("certs", "show", pki["site"].key))


# ---------------------------------------------------------------- mutual TLS with a real gRPC server


ECHO = "/tffprod.test.Echo/Echo"


@contextlib.contextmanager
def tls_server(files: IssuedFiles) -> Iterator[tuple[int, list]]:
    """A gRPC server on 127.0.0.1 that requires client certificates from ``files.ca_cert``.

    Yields ``(port, peers)``: ``peers`` collects ``x509_common_name`` of every caller.
    """
    peers: list = []

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        peers.append(context.auth_context().get("x509_common_name"))
        return request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    try:
        # No (de)serializers: requests and responses are raw bytes.
        handler = grpc.unary_unary_rpc_method_handler(echo)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tffprod.test.Echo", {"Echo": handler}),))
        credentials = grpc.ssl_server_credentials(
            [(files.key.read_bytes(), files.cert.read_bytes())],
            root_certificates=files.ca_cert.read_bytes(),
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
        assert port, "could not bind a port on 127.0.0.1"
        server.start()
        yield port, peers
    finally:
        server.stop(None)


def client_credentials(files: Optional[IssuedFiles], trust: IssuedFiles) -> grpc.ChannelCredentials:
    """Client credentials trusting ``trust.ca_cert`` and presenting ``files`` (or no certificate)."""
    if files is None:
        return grpc.ssl_channel_credentials(trust.ca_cert.read_bytes())
    return grpc.ssl_channel_credentials(trust.ca_cert.read_bytes(), files.key.read_bytes(), files.cert.read_bytes())


def call(channel: grpc.Channel, payload: bytes = b"ping") -> bytes:
    return channel.unary_unary(ECHO)(payload, timeout=TIMEOUT)


def test_tls_echo_with_client_identity(pki: dict[str, IssuedFiles]) -> None:
    with tls_server(pki["coordinator"]) as (port, peers):
        with grpc.secure_channel(f"127.0.0.1:{port}", client_credentials(pki["site"], pki["site"])) as channel:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
            assert call(channel, b"\x00hello\xff") == b"\x00hello\xff"
    assert peers == [[b"hospital-a"]]
    assert peers[0][0].decode() == identity_of(pki["site"].cert.read_bytes())


def test_tls_checks_dns_names_too(pki: dict[str, IssuedFiles]) -> None:
    options = [("grpc.ssl_target_name_override", "localhost")]  # verify the DNS SAN, not the IP SAN
    with tls_server(pki["coordinator"]) as (port, peers):
        with grpc.secure_channel(f"127.0.0.1:{port}", client_credentials(pki["site"], pki["site"]), options) as channel:
            assert call(channel) == b"ping"
    assert peers == [[b"hospital-a"]]


@pytest.mark.parametrize(
    "client", ["intruder", "expired", None],
    ids=["client-cert-from-another-ca", "expired-client-cert", "no-client-cert"],
)
def test_tls_server_rejects_a_bad_client_certificate(pki: dict[str, IssuedFiles], client: Optional[str]) -> None:
    # The client trusts the right CA, so only its own certificate can make the handshake fail.
    credentials = client_credentials(pki[client] if client else None, trust=pki["site"])
    with tls_server(pki["coordinator"]) as (port, peers):
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            with pytest.raises(grpc.RpcError) as failure:
                call(channel)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert peers == []


def test_tls_client_rejects_a_server_cert_for_another_host(pki: dict[str, IssuedFiles]) -> None:
    with tls_server(pki["elsewhere"]) as (port, peers):  # SAN elsewhere.example; reached as 127.0.0.1
        with grpc.secure_channel(f"127.0.0.1:{port}", client_credentials(pki["site"], pki["site"])) as channel:
            with pytest.raises(grpc.RpcError) as failure:
                call(channel)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert peers == []


def test_tls_server_rejects_a_plaintext_client(pki: dict[str, IssuedFiles]) -> None:
    with tls_server(pki["coordinator"]) as (port, peers):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as failure:
                call(channel)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert peers == []
