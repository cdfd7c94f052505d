"""Certificates for sites and coordinators: a small private CA and the certs it issues.

One CA per federation. Every site and every coordinator gets one key and one
certificate, valid both as a TLS server and as a TLS client (mutual TLS), whose
subject common name (CN) is the identity gateways check. Files on disk:

    ca_dir/ca.key        the CA's private key (mode 0600; keep it off the sites)
    ca_dir/ca.crt        the CA certificate (the trust root every party is given)
    out_dir/NAME.key     a site's or coordinator's private key (mode 0600)
    out_dir/NAME.crt     its certificate: CN=NAME, SANs from its hosts, signed by the CA
    out_dir/ca.crt       a copy of the CA certificate, so out_dir is all a party needs

Keys are ECDSA P-256. Nothing is ever overwritten: issuing into a directory
that already holds the files raises :class:`CertError` and leaves them as they
were. This module imports ``cryptography`` only (never TensorFlow).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import re
from pathlib import Path
from typing import Optional, Sequence, Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tffprod.errors import CertError

PathLike = Union[str, os.PathLike]

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
# Where a party is reached when no hosts are given: this machine only.
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
# Certificates start a little in the past so parties with slightly slow clocks accept them.
CLOCK_SKEW = datetime.timedelta(minutes=5)
# NAME becomes a file name and a CN (at most 64 characters).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclasses.dataclass(frozen=True)
class IssuedFiles:
    """The files written for one party (for the CA itself, ``cert`` and ``ca_cert`` are the same file)."""

    key: Path
    cert: Path
    ca_cert: Path


def init_ca(out_dir: PathLike, *, name: str = "tffprod-ca", days: int = 3650) -> IssuedFiles:
    """Create a new CA: ``out_dir/ca.key`` (mode 0600) and ``out_dir/ca.crt``.

    Args:
        out_dir: Directory for the files; created if missing.
        name: The CA certificate's common name.
        days: How long the CA certificate is valid.

    Returns:
        The written files (``cert`` and ``ca_cert`` are both ``ca.crt``).

    Raises:
        CertError: ``days`` or ``name`` is invalid, or ``ca.key``/``ca.crt`` already exists.
    """
    _check_days(days)
    if not name or len(name) > 64:
        raise CertError(f"CA name must be 1 to 64 characters, got {name!r}")
    out = Path(out_dir)
    key_path, cert_path = out / CA_KEY, out / CA_CERT
    _refuse_existing([key_path, cert_path])

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _mkdir(out)
    _write_new(key_path, _key_pem(key), mode=0o600)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644, cleanup=[key_path])
    return IssuedFiles(key=key_path, cert=cert_path, ca_cert=cert_path)


def issue(
    name: str,
    *,
    ca_dir: PathLike,
    out_dir: PathLike,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 825,
    not_before: Optional[datetime.datetime] = None,
    not_after: Optional[datetime.datetime] = None,
) -> IssuedFiles:
    """Issue a key and certificate for a site or a coordinator, signed by the CA in ``ca_dir``.

    The certificate has CN = ``name``, a SAN for each host (IP addresses as IP
    SANs, anything else as a DNS name), and extended key usage serverAuth and
    clientAuth, so one certificate serves a party both as a server and as a client.

    Args:
        name: The party's identity (CN) and the files' base name: letters, digits, ``.``, ``_``, ``-``.
        ca_dir: Directory holding ``ca.key`` and ``ca.crt`` (from :func:`init_ca`).
        out_dir: Directory for ``NAME.key`` (mode 0600), ``NAME.crt`` and a copy of ``ca.crt``;
            created if missing.
        hosts: Host names and IP addresses the party is reached at (at least one).
        days: Validity from now (ignored where ``not_before``/``not_after`` are given).
        not_before: Start of validity (default: now minus a few minutes); naive means UTC.
        not_after: End of validity (default: ``days`` from now); naive means UTC.

    Returns:
        The written files.

    Raises:
        CertError: A bad name, host or validity window; ``ca_dir`` is not a usable CA;
            ``NAME.key``/``NAME.crt`` already exist or ``out_dir`` holds a different ``ca.crt``.
    """
    if not isinstance(name, str) or not _NAME.match(name) or name == "ca":
        raise CertError(
            f"invalid name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit; 'ca' is reserved)"
        )
    _check_days(days)
    sans = _sans(hosts)
    now = _now()
    start = _utc(not_before) if not_before is not None else now - CLOCK_SKEW
    end = _utc(not_after) if not_after is not None else now + datetime.timedelta(days=days)
    if end <= start:
        raise CertError(f"certificate would end ({end.isoformat()}) before it starts ({start.isoformat()})")

    ca_key, ca_cert, ca_pem = _load_ca(Path(ca_dir))
    out = Path(out_dir)
    key_path, cert_path, ca_copy = out / f"{name}.key", out / f"{name}.crt", out / CA_CERT
    _refuse_existing([key_path, cert_path])
    copy_ca = True
    if ca_copy.exists():
        if ca_copy.read_bytes() != ca_pem:
            raise CertError(f"{ca_copy} exists and is a different CA certificate; refusing to overwrite it")
        copy_ca = False

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _mkdir(out)
    _write_new(key_path, _key_pem(key), mode=0o600)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644, cleanup=[key_path])
    if copy_ca:
        _write_new(ca_copy, ca_pem, mode=0o644, cleanup=[key_path, cert_path])
    return IssuedFiles(key=key_path, cert=cert_path, ca_cert=ca_copy)


def identity_of(cert_pem: bytes) -> str:
    """The identity (subject CN) of a PEM certificate.

    Raises:
        CertError: ``cert_pem`` is not a PEM certificate or has no CN.
    """
    return _common_name(_parse_cert(cert_pem, "certificate").subject, "certificate")


def describe(cert_path: PathLike) -> dict:
    """What a certificate file says, as JSON-ready values.

    Returns:
        ``{"path", "subject", "issuer", "not_before", "not_after", "sans", "is_ca", "sha256"}``:
        subject and issuer CNs, validity as ISO 8601 UTC, SANs as strings, whether it is a CA
        certificate, and the SHA-256 fingerprint of its DER bytes (hex).

    Raises:
        CertError: The file is missing or not a PEM certificate.
    """
    path = Path(cert_path)
    cert = _parse_cert(_read(path), str(path))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [str(name.value) for name in san]
    except x509.ExtensionNotFound:
        sans = []
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return {
        "path": str(path),
        "subject": _common_name(cert.subject, str(path)),
        "issuer": _common_name(cert.issuer, str(path)),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sans": sans,
        "is_ca": is_ca,
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }


# ---------------------------------------------------------------- helpers


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _utc(moment: datetime.datetime) -> datetime.datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc)


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise CertError(f"days must be a positive whole number, got {days!r}")


def _sans(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(hosts, str):
        hosts = [hosts]
    names: list[x509.GeneralName] = []
    for host in hosts:
        host = host.strip() if isinstance(host, str) else host
        if not host or not isinstance(host, str):
            raise CertError(f"invalid host {host!r}")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not host.isascii() or any(c.isspace() for c in host) or len(host) > 253:
            raise CertError(f"invalid host {host!r}: give an IP address or an ASCII DNS name")
        names.append(x509.DNSName(host))
    if not names:
        raise CertError("give at least one host the certificate is for")
    return names


def _load_ca(ca_dir: Path):
    if not ca_dir.is_dir():
        raise CertError(f"CA directory {ca_dir} does not exist (create one with 'tffprod certs init')")
    key_path, cert_path = ca_dir / CA_KEY, ca_dir / CA_CERT
    for p in (key_path, cert_path):
        if not p.is_file():
            raise CertError(f"{ca_dir} is not a CA directory: {p.name} is missing")
    try:
        ca_key = serialization.load_pem_private_key(_read(key_path), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CertError(f"{key_path} is not an unencrypted PEM private key: {e}") from None
    ca_pem = _read(cert_path)
    ca_cert = _parse_cert(ca_pem, str(cert_path))
    try:
        is_ca = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CertError(f"{cert_path} is not a CA certificate")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if ca_key.public_key().public_bytes(serialization.Encoding.DER, public) != ca_cert.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        raise CertError(f"{key_path} does not belong to {cert_path}")
    return ca_key, ca_cert, ca_pem


def _parse_cert(pem: bytes, what: str) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(pem)
        # Names, extensions and the key are parsed lazily: a damaged one would raise later, anywhere.
        cert.subject, cert.issuer, cert.extensions, cert.public_key()  # noqa: B018
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CertError(f"{what} is not a PEM certificate: {' '.join(str(e).split())}") from None
    return cert


def _common_name(name: x509.Name, what: str) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        raise CertError(f"{what} has no common name (CN)")
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CertError(f"cannot read {path}: {e.strerror or e}") from None


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CertError(f"cannot create directory {path}: {e.strerror or e}") from None


def _refuse_existing(paths: Sequence[Path]) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise CertError(f"refusing to overwrite existing {', '.join(existing)}")


def _write_new(path: Path, data: bytes, *, mode: int, cleanup: Sequence[Path] = ()) -> None:
    """Create ``path`` with ``mode`` (failing if it exists); on failure remove ``cleanup`` files."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        _remove(cleanup)
        raise CertError(f"refusing to overwrite existing {path}") from None
    except OSError as e:
        _remove(cleanup)
        raise CertError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if mode == 0o600:
            os.chmod(path, mode)  # a strict umask may have narrowed it; keys are exactly 0600
    except OSError as e:
        _remove([*cleanup, path])
        raise CertError(f"cannot write {path}: {e.strerror or e}") from None


def _remove(paths: Sequence[Path]) -> None:
    for p in paths:
        try:
            p.unlink()
        except OSError:
            pass
