"""Throwaway TLS certificates for tests, made with ``cryptography``.

``make_test_certs()`` writes, into a new temporary directory, a test CA and these
server certificates (each with its key, PEM):

========================  ====================================================
``ca``                    the test CA (``ca.pem``); pass it as ``ca_file`` /
                          ``REBREAK_TLS_CA_FILE`` to trust the servers below
``server``                signed by the CA for ``localhost``, ``127.0.0.1``, ``::1``
``other_host``            signed by the CA for ``other.example`` only (host-name mismatch)
``expired``               signed by the CA for localhost/127.0.0.1, expired yesterday
``self_signed``           self-signed for localhost/127.0.0.1, not trusted by anyone
========================  ====================================================

Each server entry is a :class:`CertPair` with ``cert`` (path to the certificate), ``key``
(path to the key) and ``pem`` (path to cert + key in one file, as
``twisted.internet.ssl.PrivateCertificate.loadPEM`` and ``ssl:`` endpoints want).
Results are cached per process (``make_test_certs()`` returns the same set), as RSA key
generation is the slow part.
"""

from __future__ import annotations

import datetime
import ipaddress
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertPair", "TestCerts", "make_test_certs"]


@dataclass(frozen=True)
class CertPair:
    cert: str
    key: str
    pem: str

    def private_certificate(self):  # -> twisted.internet.ssl.PrivateCertificate
        """The pair loaded as a Twisted ``PrivateCertificate`` (for ``.options()``)."""
        from twisted.internet.ssl import PrivateCertificate

        return PrivateCertificate.loadPEM(Path(self.pem).read_bytes())


@dataclass(frozen=True)
class TestCerts:
    directory: str
    ca: str           # CA certificate PEM path
    ca_key: str
    server: CertPair
    other_host: CertPair
    expired: CertPair
    self_signed: CertPair


_cached: TestCerts | None = None


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rebreak-idle tests")])


def _write(directory: Path, stem: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> CertPair:
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    (directory / f"{stem}.crt").write_bytes(cert_pem)
    (directory / f"{stem}.key").write_bytes(key_pem)
    (directory / f"{stem}.pem").write_bytes(cert_pem + key_pem)
    return CertPair(str(directory / f"{stem}.crt"), str(directory / f"{stem}.key"),
                    str(directory / f"{stem}.pem"))


def _leaf(names: list[str], issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey,
          key: ec.EllipticCurvePrivateKey, not_before: datetime.datetime,
          not_after: datetime.datetime, *, self_signed: bool = False) -> x509.Certificate:
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    subject = _name(names[0])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if self_signed else issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
    )
    return builder.sign(key if self_signed else issuer_key, hashes.SHA256())


def make_test_certs() -> TestCerts:
    """Create (once per process) the test CA and server certificates; see module doc."""
    global _cached
    if _cached is not None and Path(_cached.ca).exists():
        return _cached
    directory = Path(tempfile.mkdtemp(prefix="rebreak-certs-"))
    directory.chmod(0o755)
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)

    ca_key = _key()
    ca_name = _name("rebreak-idle test CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - day)
        .not_valid_after(now + 3650 * day)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                     crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pair = _write(directory, "ca", ca, ca_key)
    local = ["localhost", "127.0.0.1", "::1"]

    def make(stem: str, names: list[str], before: datetime.datetime,
             after: datetime.datetime, self_signed: bool = False) -> CertPair:
        key = _key()
        cert = _leaf(names, ca_name, ca_key, key, before, after, self_signed=self_signed)
        return _write(directory, stem, cert, key)

    for f in directory.iterdir():
        f.chmod(0o644)
    certs = TestCerts(
        directory=str(directory),
        ca=ca_pair.cert,
        ca_key=ca_pair.key,
        server=make("server", local, now - day, now + 3650 * day),
        other_host=make("other", ["other.example"], now - day, now + 3650 * day),
        expired=make("expired", local, now - 30 * day, now - day),
        self_signed=make("selfsigned", local, now - day, now + 3650 * day,
                         self_signed=True),
    )
    for f in directory.iterdir():
        f.chmod(0o644)  # Dovecot reads them as root, but keep them readable anyway
    _cached = certs
    return certs
