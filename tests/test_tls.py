"""Specs of cluster certificates and TLS contexts: who may speak as a member."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from pathlib import Path

import pytest

from pnyx import certs, tls


def _files(d: Path, node: int) -> tls.TlsFiles:
    return tls.TlsFiles(d / f"node-{node}.pem", d / f"node-{node}-key.pem", d / "ca.pem")


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
                     server_hostname: str | None = None) -> dict | None:
    """Connect once over 127.0.0.1; the certificate the server saw from the client."""
    seen: list[dict | None] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("peercert"))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname=server_hostname)
        answer = await reader.read(2)
        writer.close()
        if answer != b"ok":  # TLS 1.3: a refused client learns it after its own handshake
            raise ConnectionError("the server closed the connection")
    finally:
        server.close()
        await server.wait_closed()
    return seen[0]


@pytest.fixture()
def ca(tmp_path: Path) -> Path:
    certs.init_ca(tmp_path, "prod")
    for node in (1, 2):
        certs.issue_member(tmp_path, node, ["127.0.0.1", "localhost"])
    return tmp_path


def test_member_certificate_names_its_node_and_cluster(ca: Path) -> None:
    peer = asyncio.run(_handshake(tls.peer_server_context(_files(ca, 1)),
                                  tls.peer_client_context(_files(ca, 2))))
    assert tls.member_id(peer, "prod") == 2
    assert tls.member_id(peer, "other") is None


def test_ca_key_and_member_keys_are_owner_only(ca: Path) -> None:
    for name in ("ca-key.pem", "node-1-key.pem"):
        assert os.stat(ca / name).st_mode & 0o077 == 0


def test_init_refuses_to_replace_a_ca_without_force(ca: Path) -> None:
    with pytest.raises(certs.CertError, match="already holds a CA"):
        certs.init_ca(ca, "prod")


def test_issue_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(certs.CertError, match="pnyx certs init"):
        certs.issue_member(tmp_path, 1, [])


def test_peer_without_a_certificate_is_refused(ca: Path) -> None:
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.verify_mode = ssl.CERT_NONE
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        asyncio.run(_handshake(tls.peer_server_context(_files(ca, 1)), anonymous))


def test_member_of_another_cluster_ca_is_refused(ca: Path, tmp_path_factory) -> None:
    other = tmp_path_factory.mktemp("other")
    certs.init_ca(other, "prod")  # same cluster name, different CA: not trusted
    certs.issue_member(other, 2, ["127.0.0.1"])
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        asyncio.run(_handshake(tls.peer_server_context(_files(ca, 1)),
                               tls.peer_client_context(_files(other, 2))))


def test_client_checks_the_server_host_name(ca: Path) -> None:
    server = tls.client_port_context(ca / "node-1.pem", ca / "node-1-key.pem", None)
    client = tls.client_context(ca / "ca.pem")
    assert asyncio.run(_handshake(server, client, "localhost")) is None  # no client cert asked
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(_handshake(server, tls.client_context(ca / "ca.pem"), "example.org"))


def test_client_port_can_require_a_client_certificate(ca: Path) -> None:
    certs.issue_client(ca, "alice")
    server = tls.client_port_context(ca / "node-1.pem", ca / "node-1-key.pem", ca / "ca.pem")
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        asyncio.run(_handshake(server, tls.client_context(ca / "ca.pem"), "localhost"))
    alice = tls.client_context(ca / "ca.pem", ca / "client-alice.pem", ca / "client-alice-key.pem")
    peer = asyncio.run(_handshake(server, alice, "localhost"))
    assert tls.identities(peer) == ["pnyx://prod/client/alice"]


def test_renewed_certificate_is_served_without_a_restart(ca: Path) -> None:
    reloading = tls.Reloading(_files(ca, 1), tls.peer_server_context)
    serving = reloading.serving()

    async def served_certificate() -> bytes:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=serving)
        port = server.sockets[0].getsockname()[1]
        try:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=tls.peer_client_context(_files(ca, 2)))
            der: bytes = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.close()
        finally:
            server.close()
            await server.wait_closed()
        return der

    before = asyncio.run(served_certificate())
    time.sleep(0.01)
    certs.issue_member(ca, 1, ["127.0.0.1"])  # renewed: a new key and certificate
    after = asyncio.run(served_certificate())
    assert before != after


def test_tls_files_check_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(tls.TlsError, match="does not exist"):
        tls.TlsFiles(tmp_path / "a.pem", tmp_path / "b.pem", tmp_path / "c.pem").check()
