"""A participant's key material for one round, its signed advertisement, and pairwise key agreement.

Each round a participant makes two fresh X25519 key pairs: ``s`` (its pairwise masks are agreed on
these) and ``c`` (the key that encrypts the Shamir shares it sends a peer is agreed on these). Its
advertisement carries its name, its index in the round, the round context (plan id and round number,
as bytes the caller chooses) and both public keys, signed with ECDSA P-256 / SHA-256 by the
participant's long-term certificate key over a canonical, domain-separated encoding. A peer accepts
an advertisement only from a certificate the federation CA issued to that very name.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Callable, Optional, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from tffprod.privacy.secagg.errors import SecAggError, who

__all__ = ["Advertisement", "RoundKeys", "canonical", "load_public", "shared_seed", "sign_advertisement",
           "verify_advertisement"]

_ADVERTISEMENT = b"tffprod-secagg-v1 advertisement"
_AGREEMENT = b"tffprod-secagg-v1 agreement"
PUBLIC_KEY_BYTES = 32


def canonical(*fields: bytes) -> bytes:
    """An unambiguous encoding of ``fields``: each as its 4-byte big-endian length, then its bytes."""
    return b"".join(len(field).to_bytes(4, "big") + field for field in fields)


@dataclasses.dataclass(frozen=True)
class RoundKeys:
    """A participant's two fresh X25519 key pairs for one round (never reused across rounds).

    Attributes:
        s_private: the masking key; its pairwise agreements seed the pairwise masks.
        c_private: the channel key; its pairwise agreements key the encryption of shares.
    """

    s_private: x25519.X25519PrivateKey
    c_private: x25519.X25519PrivateKey

    @classmethod
    def generate(cls) -> RoundKeys:
        """Two new key pairs from the operating system's randomness."""
        return cls(x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate())

    @property
    def s_public(self) -> bytes:
        """The raw 32-byte public masking key."""
        return self.s_private.public_key().public_bytes_raw()

    @property
    def c_public(self) -> bytes:
        """The raw 32-byte public channel key."""
        return self.c_private.public_key().public_bytes_raw()


@dataclasses.dataclass(frozen=True)
class Advertisement:
    """A participant's signed public keys for one round (the coordinator relays it to every peer).

    Attributes:
        name: the participant's name, the common name (CN) of its certificate.
        index: its index in the round; its Shamir shares are evaluated at ``index + 1``.
        context: the round context (plan id and round number) the keys are for.
        s_public: raw 32-byte X25519 public masking key.
        c_public: raw 32-byte X25519 public channel key.
        signature: DER ECDSA P-256 / SHA-256 signature by the certificate key over :meth:`signed_bytes`.
    """

    name: str
    index: int
    context: bytes
    s_public: bytes
    c_public: bytes
    signature: bytes

    def signed_bytes(self) -> bytes:
        """The canonical, domain-separated encoding the signature covers (every field but the signature)."""
        return canonical(_ADVERTISEMENT, self.name.encode("utf-8"), self.index.to_bytes(8, "big"),
                         self.context, self.s_public, self.c_public)


def sign_advertisement(name: str, index: int, context: bytes, keys: RoundKeys,
                       signing_key: ec.EllipticCurvePrivateKey) -> Advertisement:
    """Advertise ``keys`` for the round ``context``, signed with the participant's certificate key.

    Raises:
        SecAggError: ``signing_key`` is not an ECDSA P-256 private key, or ``name``/``index`` is invalid.
    """
    if not isinstance(signing_key, ec.EllipticCurvePrivateKey) or not isinstance(signing_key.curve, ec.SECP256R1):
        raise SecAggError(f"participant {who(name)}: the signing key is not an ECDSA P-256 private key")
    if not isinstance(name, str) or not name or isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise SecAggError(f"participant {who(name)}: invalid name or index")
    unsigned = Advertisement(name, index, bytes(context), keys.s_public, keys.c_public, b"")
    signature = signing_key.sign(unsigned.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    return dataclasses.replace(unsigned, signature=signature)


def verify_advertisement(advertisement: Advertisement, cert_pem: bytes, ca_pem: bytes, context: bytes, *,
                         now: Optional[datetime.datetime] = None) -> None:
    """Check that ``advertisement`` comes from the participant it names, for the round ``context``.

    Args:
        advertisement: the advertisement as relayed by the coordinator.
        cert_pem: the advertiser's certificate (PEM).
        ca_pem: the federation CA's certificate (PEM), the trust root.
        context: the round context the verifier expects.
        now: the time the certificate must be valid at (default: now, UTC).

    Raises:
        SecAggError: the certificate is not issued by the CA, not valid at ``now`` or not for the advertised
            name; the signature does not verify; the keys are malformed; or the context differs.
    """
    name = advertisement.name

    def refuse(problem: str) -> SecAggError:
        return SecAggError(f"advertisement of {who(name)} refused: {problem}")

    if not isinstance(name, str) or not isinstance(advertisement.index, int) or isinstance(advertisement.index, bool):
        raise refuse("malformed name or index")
    if advertisement.context != context:
        raise refuse("it is for another round context")
    for key in (advertisement.s_public, advertisement.c_public):
        if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_BYTES:
            raise refuse("a public key is not 32 raw bytes")
    cert, ca = _load_cert(cert_pem, refuse, "its certificate"), _load_cert(ca_pem, refuse, "the CA certificate")
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise refuse("the given CA certificate is not a CA certificate")
    try:
        if hasattr(cert, "verify_directly_issued_by"):
            cert.verify_directly_issued_by(ca)
        else:  # cryptography < 40
            ca_key, algorithm = ca.public_key(), cert.signature_hash_algorithm
            if cert.issuer != ca.subject or not isinstance(ca_key, ec.EllipticCurvePublicKey) or algorithm is None:
                raise ValueError("not issued by this CA")
            ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise refuse("its certificate is not issued by the federation CA") from None
    moment = now if now is not None else datetime.datetime.now(datetime.timezone.utc)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    for checked, what in ((cert, "its certificate"), (ca, "the CA certificate")):
        if not checked.not_valid_before_utc <= moment <= checked.not_valid_after_utc:
            raise refuse(f"{what} is not valid at {moment.isoformat(timespec='seconds')}")
    names = [attr.value for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [name]:
        raise refuse("its certificate is issued to another name")
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
        raise refuse("its certificate key is not ECDSA P-256")
    try:
        public.verify(advertisement.signature, advertisement.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, TypeError, ValueError):
        raise refuse("the signature does not verify") from None


def load_public(raw: bytes, owner: str) -> x25519.X25519PublicKey:
    """The X25519 public key of ``owner`` from its 32 raw bytes.

    Raises:
        SecAggError: ``raw`` is not a 32-byte X25519 public key.
    """
    try:
        return x25519.X25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError):
        raise SecAggError(f"participant {who(owner)}: malformed X25519 public key") from None


def shared_seed(my_private: x25519.X25519PrivateKey, their_public: Union[x25519.X25519PublicKey, bytes],
                context: bytes, names: tuple[str, str], *, purpose: bytes = b"pairwise-mask") -> bytes:
    """32 bytes both ends of a pair derive alike: HKDF-SHA256 over their X25519 shared secret.

    The HKDF info binds ``purpose``, the round ``context`` and the two names in sorted order, so
    ``shared_seed(a, B, ctx, (na, nb))`` equals ``shared_seed(b, A, ctx, (nb, na))``.

    Args:
        my_private: one end's private key.
        their_public: the other end's public key (or its 32 raw bytes).
        context: the round context.
        names: ``(my name, their name)``; the order does not change the seed.
        purpose: what the seed is for (a different purpose gives an unrelated seed).

    Raises:
        SecAggError: the names are not two different names, or the agreement fails (a low-order public key).
    """
    if len(names) != 2 or names[0] == names[1]:
        raise SecAggError(f"pair {who(names[0] if names else '')}: a pairwise seed needs two different names")
    first, second = sorted(names)
    public = load_public(their_public, names[1]) if isinstance(their_public, bytes) else their_public
    try:
        secret = my_private.exchange(public)
    except ValueError:
        raise SecAggError(f"pair {who(first)}/{who(second)}: key agreement failed (a low-order public key)") from None
    info = canonical(_AGREEMENT, purpose, context, first.encode("utf-8"), second.encode("utf-8"))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _load_cert(pem: bytes, refuse: Callable[[str], SecAggError], what: str) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(pem)
        cert.subject, cert.issuer, cert.extensions  # noqa: B018 - parsed lazily; fail here, not later
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise refuse(f"{what} is not a PEM certificate") from None
    return cert
