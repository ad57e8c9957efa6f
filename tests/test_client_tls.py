"""Specs of TLS on the client ports: HTTPS and the binary protocol over TLS, with and
without client certificates, from every Python client and the CLI.

Real TCP on 127.0.0.1 and real certificates (`pnyx.certs`, in a temporary directory):
the server presents a member's certificate (it names 127.0.0.1), the clients check it
against the cluster's CA, and a port with client-certificate authentication takes only
clients with a certificate from that CA.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import pnyx
from fake_node import FakeNode, ServerThread
from pnyx import certs, tls
from pnyx.api.binary import close_server, serve_clients
from pnyx.cli import kv as cli_kv
from pnyx.client.common import tls_context


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    certs.init_ca(d, "pnyx")
    certs.issue_member(d, 1, ["127.0.0.1", "localhost"])
    certs.issue_client(d, "app")
    other = d / "other"
    certs.init_ca(other, "pnyx")
    certs.issue_client(other, "intruder")
    return d


def server_ctx(ca: Path, *, client_certs: bool = False) -> ssl.SSLContext:
    return tls.client_port_context(ca / "node-1.pem", ca / "node-1-key.pem",
                                   ca / "ca.pem" if client_certs else None)


def client_cert(ca: Path) -> dict[str, Any]:
    return {"cacert": ca / "ca.pem", "cert": ca / "client-app.pem",
            "key": ca / "client-app-key.pem"}


@contextlib.contextmanager
def https(ca: Path, *, client_certs: bool = False) -> Iterator[ServerThread]:
    with ServerThread(FakeNode(), serve_kwargs={
            "ssl": server_ctx(ca, client_certs=client_certs), "request_timeout": 1.0}) as s:
        yield s


@contextlib.asynccontextmanager
async def binary_tls(ca: Path, *, client_certs: bool = False,
                     ) -> AsyncIterator[tuple[FakeNode, str]]:
    node = FakeNode()
    server = await serve_clients(node, "127.0.0.1", 0,
                                 ssl=server_ctx(ca, client_certs=client_certs))
    try:
        yield node, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        await close_server(server)


# --- HTTPS ---------------------------------------------------------------------------


def test_sync_client_over_https(ca: Path) -> None:
    with https(ca) as server, pnyx.Client([f"https://{server.address}"],
                                          cacert=ca / "ca.pem") as client:
        assert client.put("k", b"v") == 1
        assert client.get("k") == (b"v", 1)
        assert client.ssl is not None


def test_async_client_over_https(ca: Path) -> None:
    async def go() -> None:
        async with pnyx.AsyncClient([server.address], cacert=ca / "ca.pem") as client:
            assert await client.put("k", b"v") == 1
            assert await client.get("k") == (b"v", 1)

    with https(ca) as server:
        asyncio.run(go())


def test_https_port_with_client_cert_auth_takes_only_clients_with_a_certificate(
        ca: Path) -> None:
    with https(ca, client_certs=True) as server:
        with pnyx.Client([server.address], **client_cert(ca)) as client:
            assert client.put("k", b"v") == 1
        for refused in ({"cacert": ca / "ca.pem"},  # no certificate
                        {"cacert": ca / "ca.pem", "cert": ca / "other" / "client-intruder.pem",
                         "key": ca / "other" / "client-intruder-key.pem"}):  # another CA's
            with pnyx.Client([server.address], retry_timeout=0.5, **refused) as client, \
                    pytest.raises(pnyx.Unavailable):
                client.get("k")
        assert server.node.index == 1


def test_a_client_that_does_not_trust_the_servers_ca_refuses_it_at_once(ca: Path) -> None:
    other_ca = {"cacert": ca / "other" / "ca.pem", "retry_timeout": 30}

    def refused(call: Any) -> pnyx.PnyxError:
        started = time.monotonic()
        with pytest.raises(pnyx.PnyxError) as error:
            call()
        assert time.monotonic() - started < 5  # not retried for 30 s: no node would do
        assert not isinstance(error.value, pnyx.Unavailable)
        assert error.value.code == "tls_untrusted" and "--cacert" in error.value.message
        return error.value

    async def async_put(address: str) -> None:
        async with pnyx.AsyncClient([address], **other_ca) as client:
            await client.put("k", b"v")

    async def async_fast_put(address: str) -> None:
        async with pnyx.AsyncFastClient([address], **other_ca) as client:
            await client.put("k", b"v")

    async def binary_address() -> None:
        async with binary_tls(ca) as (node, address):
            await asyncio.to_thread(refused, lambda: asyncio.run(async_fast_put(address)))

            def fast_put() -> None:
                with pnyx.FastClient([address], **other_ca) as client:
                    client.put("k", b"v")

            await asyncio.to_thread(refused, fast_put)
            assert node.submitted == []

    with https(ca) as server:
        with pnyx.Client([server.address], **other_ca) as client:
            refused(lambda: client.put("k", b"v"))
        refused(lambda: asyncio.run(async_put(server.address)))
        assert server.node.index == 0
    asyncio.run(binary_address())


def test_plaintext_http_to_an_https_port_gets_no_answer(ca: Path) -> None:
    with https(ca) as server, pnyx.Client([server.address], retry_timeout=0.5) as client, \
            pytest.raises(pnyx.Unavailable):
        client.put("k", b"v")


def test_https_to_a_plain_http_port_is_answered_in_the_json_shape() -> None:
    with ServerThread(FakeNode(), serve_kwargs={"request_timeout": 1.0}) as server:
        host, port = server.address.split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64)
            answer = s.recv(4096)
    assert re.match(rb"HTTP/1\.[01] 400 ", answer)
    assert b'"code": "bad_request"' in answer and b"TLS on a plain HTTP port" in answer


# --- the binary protocol over TLS ----------------------------------------------------


def test_async_fast_client_over_tls(ca: Path) -> None:
    async def go() -> None:
        async with binary_tls(ca) as (_, address), pnyx.AsyncFastClient(
                [address], cacert=ca / "ca.pem") as client:
            indexes = await asyncio.gather(*(client.put(f"k{i}", b"v") for i in range(200)))
            assert sorted(indexes) == list(range(1, 201))
            assert await client.get("k7") == (b"v", indexes[7])

    asyncio.run(go())


def test_sync_fast_client_over_tls_with_a_client_certificate(ca: Path) -> None:
    async def go() -> None:
        async with binary_tls(ca, client_certs=True) as (node, address):
            def blocking() -> None:
                with pnyx.FastClient([address], **client_cert(ca)) as client:
                    assert client.put("k", b"v") == 1
                    assert client.get("k") == (b"v", 1)
                with pnyx.FastClient([address], cacert=ca / "ca.pem",
                                     retry_timeout=0.5) as client, \
                        pytest.raises(pnyx.Unavailable):
                    client.put("k", b"w")

            await asyncio.to_thread(blocking)
            assert node.index == 1  # the client without a certificate changed nothing

    asyncio.run(go())


def test_binary_tls_port_refuses_a_plaintext_client(ca: Path) -> None:
    async def go() -> None:
        async with binary_tls(ca) as (node, address), pnyx.AsyncFastClient(
                [address], retry_timeout=0.5) as client:
            with pytest.raises(pnyx.Unavailable):
                await client.put("k", b"v")
            assert node.submitted == []

    asyncio.run(go())


# --- the CLI ---------------------------------------------------------------------------


def cli(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="pnyx")
    cli_kv.add_parsers(parser.add_subparsers(dest="command"))
    out, err = io.StringIO(), io.StringIO()
    code = cli_kv.run(parser.parse_args(argv), stdout=out, stderr=err,
                      stdin=io.BytesIO(), stdout_bytes=io.BytesIO())
    return code, out.getvalue(), err.getvalue()


def test_cli_over_https_with_cacert_cert_and_key(ca: Path) -> None:
    tls_flags = ("--cacert", str(ca / "ca.pem"), "--cert", str(ca / "client-app.pem"),
                 "--key", str(ca / "client-app-key.pem"))
    with https(ca, client_certs=True) as server:
        ep = f"https://{server.address}"
        assert cli("put", "greeting", "hello", "--endpoints", ep, *tls_flags) == (
            0, "OK index=1\n", "")
        code, out, _ = cli("status", "--endpoints", ep, *tls_flags)
        assert code == 0 and "leader" in out
        # Without a certificate the node does not take the client.
        code, _, err = cli("put", "greeting", "bye", "--endpoints", ep, "--timeout", "0.5",
                           "--cacert", str(ca / "ca.pem"))
        assert code == 1 and "unavailable" in err
        assert server.node.index == 1


def test_cli_tls_flags_that_contradict_are_usage_errors(ca: Path, tmp_path: Path) -> None:
    code, _, err = cli("get", "k", "--endpoints", "http://127.0.0.1:1", "--cacert",
                       str(ca / "ca.pem"))
    assert code == 2 and "http://" in err
    code, _, err = cli("get", "k", "--key", str(ca / "client-app-key.pem"))
    assert code == 2 and "--cert" in err
    code, _, err = cli("get", "k", "--cacert", str(tmp_path / "missing.pem"))
    assert code == 2 and "missing.pem" in err and "\n" not in err.rstrip("\n")


def test_tls_is_on_for_https_endpoints_or_any_tls_option(ca: Path) -> None:
    assert tls_context(["127.0.0.1:1"], ssl_context=None, cacert=None, cert=None,
                       key=None) is None
    assert tls_context(["https://127.0.0.1:1"], ssl_context=None, cacert=None, cert=None,
                       key=None) is not None
    assert tls_context(["127.0.0.1:1"], ssl_context=None, cacert=ca / "ca.pem", cert=None,
                       key=None) is not None
    with pytest.raises(ValueError, match="mix"):
        tls_context(["http://a:1", "https://b:2"], ssl_context=None, cacert=None, cert=None,
                    key=None)


# --- pnyx serve --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_pnyx_serve_with_cert_file_and_client_cert_auth_serves_both_ports_over_tls(
        ca: Path, tmp_path: Path) -> None:
    peer, http_port, client_port = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pnyx.cli", "serve", "--id", "1", "--cluster",
         f"1=127.0.0.1:{peer}", "--data-dir", str(tmp_path / "data"),
         "--http", f"127.0.0.1:{http_port}", "--client", f"127.0.0.1:{client_port}",
         "--cert-file", str(ca / "node-1.pem"), "--key-file", str(ca / "node-1-key.pem"),
         "--client-cert-auth", "--trusted-ca-file", str(ca / "ca.pem")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with pnyx.Client([f"https://127.0.0.1:{http_port}"], retry_timeout=20,
                         **client_cert(ca)) as client:
            assert client.put("k", b"v") >= 1
        with pnyx.FastClient([f"127.0.0.1:{client_port}"], **client_cert(ca)) as fast:
            assert fast.get("k")[0] == b"v"
        with pnyx.Client([f"https://127.0.0.1:{http_port}"], cacert=ca / "ca.pem",
                         retry_timeout=0.5) as anonymous, pytest.raises(pnyx.Unavailable):
            anonymous.get("k")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert b"clients over TLS with client certificates" in err


def test_pnyx_serve_with_unusable_client_tls_files_says_so_in_one_line(
        ca: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pnyx.cli", "serve", "--id", "1", "--cluster",
         f"1=127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "data"),
         "--http", f"127.0.0.1:{free_port()}", "--cert-file", str(ca / "node-1.pem"),
         "--key-file", str(ca / "client-app-key.pem")],  # a key that is not the cert's
        capture_output=True, timeout=30)
    assert result.returncode != 0
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "node-1.pem" in lines[0], lines
