"""Certificates for a pnyx cluster: its CA, member certificates that name a node id,
and client certificates (`pnyx certs init` / `pnyx certs issue`).

A certificate says who may speak as whom. Each member's certificate carries its
identity as a URI in subjectAltName, `pnyx://CLUSTER/node/ID` (`pnyx.tls` reads
it back), plus the DNS names and IP addresses it is reached at, so clients can
check the host name as usual. A client certificate carries
`pnyx://CLUSTER/client/NAME`. Everything is signed by one CA per cluster; its
key is the one secret that can make members, so it is written owner-only and
never needed by a running node.

Files in a certificate directory:

    ca.pem, ca-key.pem                  the cluster's CA (keep ca-key.pem offline)
    node-ID.pem, node-ID-key.pem        member ID
    client-NAME.pem, client-NAME-key.pem

Keys are ECDSA P-256: small, fast to handshake, supported by every TLS stack.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pnyx.tls import client_uri, member_uri

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class CertError(ValueError):
    """A certificate request that cannot be done; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class Issued:
    cert: Path
    key: Path


def _write(path: Path, data: bytes, secret: bool) -> None:
    """Write atomically; a key is owner-only from the moment it exists."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def init_ca(directory: Path, cluster_id: str = "pnyx", *, days: int = 3650,
            force: bool = False) -> Issued:
    """Make the cluster's CA in `directory` (refused if one is there, unless `force`)."""
    _check_name(cluster_id, "cluster id")
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if (cert_path.exists() or key_path.exists()) and not force:
        raise CertError(f"{directory} already holds a CA ({CA_CERT}); "
                        "pass --force to replace it (every certificate it issued stops working)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pnyx CA for {cluster_id}")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), secret=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), secret=False)
    return Issued(cert_path, key_path)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except FileNotFoundError as exc:
        raise CertError(f"no CA in {directory} ({exc.filename} is missing); "
                        "make one with `pnyx certs init DIR`") from None
    except ValueError as exc:
        raise CertError(f"{directory}: the CA files cannot be read ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_path}: not a key made by `pnyx certs init`")
    return cert, key


def _cluster_of(ca: x509.Certificate) -> str:
    common = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    text = str(common[0].value) if common else ""
    prefix = "pnyx CA for "
    if not text.startswith(prefix):
        raise CertError("the CA was not made by `pnyx certs init` (its name says no cluster)")
    return text[len(prefix):]


def _check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise CertError(f"{what} {name!r} must be 1-63 letters, digits, '.', '_' or '-'")


def _alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})", host):
                raise CertError(f"host {host!r} is neither an IP address nor a DNS name") from None
            names.append(x509.DNSName(host))
    return names


def _issue(directory: Path, stem: str, common_name: str, uri: str, hosts: list[str],
           days: int, server: bool) -> Issued:
    ca, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(uri), *_alt_names(hosts)]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    _write(key_path, _key_pem(key), secret=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), secret=False)
    return Issued(cert_path, key_path)


def issue_member(directory: Path, node_id: int, hosts: list[str], *,
                 days: int = 825) -> Issued:
    """A member's certificate: it may serve and connect as node `node_id` of the CA's cluster.
    `hosts` are the names and addresses others reach it at (peers, HTTP and binary clients)."""
    if node_id < 0:
        raise CertError(f"node id {node_id} is negative")
    ca, _ = _load_ca(directory)
    cluster = _cluster_of(ca)
    return _issue(directory, f"node-{node_id}", f"pnyx node {node_id}",
                  member_uri(cluster, node_id), hosts or ["localhost", "127.0.0.1"], days,
                  server=True)


def issue_client(directory: Path, name: str, *, days: int = 825) -> Issued:
    """A client's certificate, for ports that require client-certificate authentication."""
    _check_name(name, "client name")
    ca, _ = _load_ca(directory)
    return _issue(directory, f"client-{name}", f"pnyx client {name}",
                  client_uri(_cluster_of(ca), name), [], days, server=False)
