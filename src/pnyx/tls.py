"""TLS for pnyx: the contexts members and clients use, and who a certificate says its
holder is.

Between members TLS is mutual: each side presents a certificate from the
cluster's CA and checks the other's. A member's certificate names it as
`pnyx://CLUSTER/node/ID` in subjectAltName (`pnyx.certs` makes such
certificates); the peer transport accepts a connection only when the node id
its hello claims is the one the certificate names, so no process without a
member's key can speak as that member. Peer connections check that identity
instead of the host name: members may be dialled at addresses their
certificates do not list (NAT, `--listen`).

Clients check the server's host name as HTTPS does; a port may also require a
client certificate from the same CA.

Certificates are renewed without a restart: a `Reloading` context is rebuilt
from its files when any of them changes, and a new connection uses the new one
(connections already open keep theirs).

Only the standard library's `ssl`: clients import this module too.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEME = "pnyx://"


class TlsError(ValueError):
    """TLS files that cannot be used; the message is one line for the user."""


def member_uri(cluster_id: str, node_id: int) -> str:
    return f"{SCHEME}{cluster_id}/node/{node_id}"


def client_uri(cluster_id: str, name: str) -> str:
    return f"{SCHEME}{cluster_id}/client/{name}"


def identities(peercert: dict[str, Any] | None) -> list[str]:
    """The pnyx URIs a verified certificate (`SSLSocket.getpeercert()`) names."""
    if not peercert:
        return []
    return [value for kind, value in peercert.get("subjectAltName", ())
            if kind == "URI" and value.startswith(SCHEME)]


def member_id(peercert: dict[str, Any] | None, cluster_id: str) -> int | None:
    """The node id a certificate names in `cluster_id`, or None if it names no member."""
    prefix = f"{SCHEME}{cluster_id}/node/"
    for uri in identities(peercert):
        if uri.startswith(prefix) and uri[len(prefix):].isdigit():
            return int(uri[len(prefix):])
    return None


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A certificate, its key and the CA that certificates of the other side must chain to."""

    cert: Path
    key: Path
    ca: Path

    def check(self) -> None:
        """Fail now, with one line, if a file is missing or the key does not fit."""
        for what, path in (("certificate", self.cert), ("key", self.key), ("CA", self.ca)):
            if not path.is_file():
                raise TlsError(f"TLS {what} {path} does not exist")
        _load(ssl.create_default_context(), self.cert, self.key, self.ca)

    def stamp(self) -> tuple[int, ...]:
        stamps: list[int] = []
        for path in (self.cert, self.key, self.ca):
            try:
                stamps.append(os.stat(path).st_mtime_ns)
            except OSError:
                stamps.append(-1)
        return tuple(stamps)


def _load(ctx: ssl.SSLContext, cert: Path | None, key: Path | None, ca: Path | None) -> None:
    try:
        if cert is not None:
            ctx.load_cert_chain(cert, key)
        if ca is not None:
            ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(str(p) for p in (cert, key, ca) if p is not None)
        raise TlsError(f"cannot use TLS files {files}: {exc}") from None


def _base(purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def peer_server_context(files: TlsFiles) -> ssl.SSLContext:
    """A member accepting a peer: the peer must present a certificate from the CA."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load(ctx, files.cert, files.key, files.ca)
    return ctx


def peer_client_context(files: TlsFiles) -> ssl.SSLContext:
    """A member dialling a peer: the peer's certificate must chain to the CA (its member
    identity, not its host name, is checked by the transport)."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load(ctx, files.cert, files.key, files.ca)
    return ctx


def client_port_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """A member serving clients (HTTP, binary): with `client_ca`, a client must present a
    certificate from it."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    _load(ctx, cert, key, client_ca)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(cacert: Path | None = None, cert: Path | None = None,
                   key: Path | None = None) -> ssl.SSLContext:
    """A client of the HTTP or binary port: checks the server's certificate and host name
    against `cacert` (or the system's CAs); presents `cert` if given."""
    ctx = ssl.create_default_context(cafile=str(cacert) if cacert is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        _load(ctx, cert, key, None)
    return ctx


class Reloading:
    """A context rebuilt from its files whenever one of them changes on disk."""

    def __init__(self, files: TlsFiles, build: Callable[[TlsFiles], ssl.SSLContext]) -> None:
        self.files = files
        self._build = build
        self._stamp = files.stamp()
        self._ctx = build(files)

    def context(self) -> ssl.SSLContext:
        stamp = self.files.stamp()
        if stamp != self._stamp:
            try:
                self._ctx = self._build(self.files)
                self._stamp = stamp
            except TlsError:
                pass  # half-written renewal: keep serving with the last good context
        return self._ctx

    def serving(self) -> ssl.SSLContext:
        """A context to hand to a server once: every handshake switches to the context of
        the files as they are then (OpenSSL asks the SNI callback on every handshake)."""
        outer = self._build(self.files)

        def pick(sslobj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
            sslobj.context = self.context()

        outer.sni_callback = pick  # type: ignore[assignment]
        return outer
