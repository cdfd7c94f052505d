"""A real gateway in front of a real ``worker_binary`` on loopback, its certificates and executor calls.

The gateway tests (integration) and the gateway's TFF tests (e2e) build their module-scoped fixtures from these.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tffprod.executors.audit import AuditLog, read_audit_log
from tffprod.executors.datarefs import CatalogEntry
from tffprod.executors.gateway import EXECUTOR_SERVICE, MESSAGE_LIMITS, Gateway
from tffprod.protocol.protos import computation_pb2, executor_pb2
from tffprod.workers.process import WorkerProcess

TOKEN = "correct-horse-battery-staple"


SITE = "site-a"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _issue(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], cn: str, *,
           server: bool = False) -> tuple[bytes, bytes]:
    """``(key_pem, cert_pem)`` for ``cn`` signed by ``ca``; EKU serverAuth + clientAuth."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        import ipaddress

        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)


def site_catalog(site_dir: Path) -> dict[str, CatalogEntry]:
    def entry(name: str, lines: int) -> CatalogEntry:
        path = site_dir / f"{name}-lines.txt"
        return CatalogEntry(name=name, path=str(path), format="text", schema={"line": "string"},
                            num_examples=lines, content_hash=hashlib.sha256(path.read_bytes()).hexdigest())

    return {"train": entry("train", 3), "eval": entry("eval", 2)}


class Site:
    """A real worker and a real gateway on loopback, stopped by ``close``."""

    def __init__(self, tmp: Path, site_dir: Path, pki: dict[str, bytes], *, insecure_dev: bool = False,
                 approvals=None, ledger=None, federations=None) -> None:
        self.catalog = site_catalog(site_dir)
        self.audit_path = tmp / f"audit-{time.monotonic_ns()}.jsonl"
        self.worker = WorkerProcess(name="gw-test", cwd=site_dir, log_path=tmp / "worker.log").start()
        self.audit = AuditLog(self.audit_path)
        self.gateway = Gateway(
            site=SITE, listen="127.0.0.1:0", worker_address=self.worker.address, catalog=self.catalog,
            tokens={"coordinator": hashlib.sha256(TOKEN.encode()).hexdigest(),
                    "stranger-without-token": "0" * 64},
            tls=None if insecure_dev else (pki["server_key"], pki["server_cert"], pki["ca"]),
            audit=self.audit, insecure_dev=insecure_dev, worker_health=self.worker.alive, approvals=approvals,
            ledger=ledger, federations=federations)
        try:
            self.port = self.gateway.start()
        except BaseException:
            self.close()
            raise
        self.address = f"127.0.0.1:{self.port}"

    def records(self) -> list[dict]:
        return list(read_audit_log(self.audit_path))

    def close(self) -> None:
        try:
            self.gateway.stop(0.5)
        finally:
            self.worker.stop()
            self.audit.close()


def tls_channel(site: Site, pki: dict[str, bytes], who: str = "client", *, token: str | None = TOKEN) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(pki["ca"], pki[f"{who}_key"], pki[f"{who}_cert"])
    if token is not None:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(site.address, creds, options=MESSAGE_LIMITS)


def rpc(channel: grpc.Channel, method: str, request, **kwargs) -> bytes:
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    return channel.unary_unary(f"/{EXECUTOR_SERVICE}/{method}")(raw, timeout=30, **kwargs)


def get_executor(channel: grpc.Channel, clients: int = 1, **kwargs) -> executor_pb2.ExecutorId:
    request = executor_pb2.GetExecutorRequest(cardinalities=[executor_pb2.Cardinality(
        placement=computation_pb2.Placement(uri="clients"), cardinality=clients)])
    return executor_pb2.GetExecutorResponse.FromString(rpc(channel, "GetExecutor", request, **kwargs)).executor


def dispose_executor(channel: grpc.Channel, executor: executor_pb2.ExecutorId, **kwargs) -> None:
    rpc(channel, "DisposeExecutor", executor_pb2.DisposeExecutorRequest(executor=executor), **kwargs)


def status_of(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def make_pki() -> dict[str, bytes]:
    """Keys and certificates (PEM): the site's server pair, a coordinator, a stranger, and a rogue from another CA."""
    ca = _make_ca("tffprod test CA")
    other_ca = _make_ca("someone else's CA")
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    server_key, server_cert = _issue(ca, SITE, server=True)
    client_key, client_cert = _issue(ca, "coordinator")
    stranger_key, stranger_cert = _issue(ca, "stranger")
    rogue_key, rogue_cert = _issue(other_ca, "coordinator")
    return {"ca": pem(ca[1]), "server_key": server_key, "server_cert": server_cert,
            "client_key": client_key, "client_cert": client_cert,
            "stranger_key": stranger_key, "stranger_cert": stranger_cert,
            "rogue_key": rogue_key, "rogue_cert": rogue_cert}


def make_site_dir(root: Path) -> Path:
    """``root`` with two line files, ``train`` (3 lines) and ``eval`` (2)."""
    (root / "train-lines.txt").write_text("alpha\nbeta\ngamma\n")
    (root / "eval-lines.txt").write_text("one\ntwo\n")
    return root
