"""A private network of Linux network namespaces, one per node, for partition tests.

This module owns the network that `pnyx.testing.Cluster(namespaces=True)` and
`pnyx chaos` put their nodes in, and the faults made in it:

- a bridge in the caller's namespace, with an address (`host`), so clients
  running here reach every node;
- one namespace per node, joined to the bridge by a veth pair; node `i`
  has its own address `address(i)` in a private /24 chosen not to clash
  with any route here;
- a cut between two nodes, both ways, of one of two kinds: `blackhole` (a
  blackhole route: the sender's kernel drops the packets at once, and a new
  connection fails at once) or `loss` (silent loss: packets leave and never
  arrive, as on a broken link; the sender learns nothing and TCP retransmits).
  Silent loss is made with `ip` alone — a route through a gateway that does not
  exist, whose neighbour entry names a MAC no one has — because `tc netem`
  needs kernel modules (sch_netem, sch_prio, a classifier) that many kernels,
  this project's CI included, do not have; clients are never cut.

Everything is named after this process's id (`px<pid><letter>...`), deleted by
`teardown` (idempotent), at exit (`atexit`), and, for networks whose process
died without cleaning up (SIGKILL), by the next `NetnsNetwork.setup` on the
machine. `unavailable()` says why namespaces cannot be used here (not root,
no `ip`, `ip netns add` refused), for tests to skip with that reason.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable, Sequence
from typing import Final, Literal

CutKind = Literal["blackhole", "loss"]
CUT_KINDS: Final[tuple[CutKind, ...]] = ("blackhole", "loss")

_NAME = re.compile(r"^px(\d+)([a-z])(?:br|n\d+|h\d+)$")
_LOSS_GATEWAY: Final = 253  # host part of the gateway that does not exist
_LOSS_MAC: Final = "02:00:00:00:00:fd"  # a MAC no interface has
_letters = itertools.cycle("abcdefghijklmnopqrstuvwxyz")
_live: dict[str, NetnsNetwork] = {}
_lock = threading.Lock()


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS` (in namespace `ns`); raises `NetnsError` with its stderr if it fails."""
    cmd = ["ip", *(["netns", "exec", ns, "ip"] if ns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {done.stderr.strip() or done.returncode}")
    return done


class NetnsError(RuntimeError):
    """An `ip` command failed."""


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None if they can."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run the tests as root, or in a container as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"px{os.getpid()}zprobe"
    try:
        done = ip("netns", "add", probe, check=False)
        if done.returncode != 0:
            return f"`ip netns add` fails here: {done.stderr.strip()}"
        done = ip("link", "add", f"{probe[:11]}br", "type", "bridge", check=False)
        if done.returncode != 0:
            return f"cannot make a bridge here: {done.stderr.strip()}"
        ip("link", "del", f"{probe[:11]}br", check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns` cannot run: {exc}"
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            ip("netns", "del", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Delete the namespaces and links of networks whose process is gone; their names."""
    removed: list[str] = []
    names = [line.split()[0] for line in ip("netns", "list", check=False).stdout.splitlines()
             if line.strip()]
    links = [m.group(1) for m in re.finditer(r"^\d+: ([^:@]+)",
                                             ip("-o", "link", "show", check=False).stdout,
                                             re.MULTILINE)]
    for name in names + links:
        m = _NAME.match(name)
        if m is None or _alive(int(m.group(1))):
            continue
        if name in names:
            ip("netns", "del", name, check=False)
        else:
            ip("link", "del", name, check=False)
        removed.append(name)
    return removed


class NetnsNetwork:
    """Namespaces for `nodes` on one bridge; `setup()` makes them, `teardown()` removes them."""

    def __init__(self, nodes: Iterable[int]) -> None:
        self.nodes = sorted(nodes)
        if not self.nodes or self.nodes[0] < 1 or self.nodes[-1] > 250:
            raise ValueError("node ids must be 1 to 250")
        with _lock:
            self.tag = f"px{os.getpid()}{next(_letters)}"
        self.bridge = f"{self.tag}br"
        self.subnet: ipaddress.IPv4Network | None = None
        self.cuts: dict[frozenset[int], CutKind] = {}
        self._made: list[tuple[str, str]] = []  # ("netns"|"link", name), to undo

    # ----------------------------------------------------------------- names

    def namespace(self, i: int) -> str:
        return f"{self.tag}n{i}"

    def address(self, i: int) -> str:
        assert self.subnet is not None, "setup() first"
        return str(self.subnet.network_address + i)

    @property
    def host(self) -> str:
        """The bridge's address: where clients here are seen from."""
        assert self.subnet is not None, "setup() first"
        return str(self.subnet.network_address + 254)

    def exec_prefix(self, i: int) -> list[str]:
        """What to put before a command to run it in node `i`'s namespace."""
        return ["ip", "netns", "exec", self.namespace(i)]

    # ------------------------------------------------------------- lifecycle

    def setup(self) -> NetnsNetwork:
        cleanup_stale()
        self.subnet = _free_subnet()
        with _lock:
            _live[self.tag] = self
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", self.bridge))
            ip("addr", "add", f"{self.host}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            gateway = str(self.subnet.network_address + _LOSS_GATEWAY)
            for i in self.nodes:
                ns, veth = self.namespace(i), f"{self.tag}h{i}"
                ip("netns", "add", ns)
                self._made.append(("netns", ns))
                ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                self._made.append(("link", veth))
                ip("link", "set", veth, "master", self.bridge, "up")
                ip("addr", "add", f"{self.address(i)}/24", "dev", "eth0", ns=ns)
                ip("link", "set", "eth0", "up", ns=ns)
                ip("link", "set", "lo", "up", ns=ns)
                # The gateway of silent loss: its MAC answers nobody's frames.
                ip("neigh", "replace", gateway, "lladdr", _LOSS_MAC, "dev", "eth0",
                   "nud", "permanent", ns=ns)
        except BaseException:
            self.teardown()
            raise
        atexit.register(self.teardown)
        return self

    def teardown(self) -> None:
        """Remove everything `setup` made (again: nothing to do). Processes still in a
        namespace keep it alive until they exit; stop them first."""
        made, self._made = self._made, []
        for kind, name in reversed(made):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                ip(kind, "del", name, check=False)
        with _lock:
            _live.pop(self.tag, None)
        self.cuts.clear()

    def __enter__(self) -> NetnsNetwork:
        return self.setup()

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # ---------------------------------------------------------------- faults

    def cut(self, a: int, b: int, kind: CutKind = "blackhole") -> None:
        """Nodes `a` and `b` no longer reach each other (both ways), by `kind`."""
        if kind not in CUT_KINDS:
            raise ValueError(f"cut kind must be one of {', '.join(CUT_KINDS)}, not {kind!r}")
        pair = frozenset((a, b))
        if a == b or self.cuts.get(pair) == kind:
            return
        if pair in self.cuts:
            self.mend(a, b)
        assert self.subnet is not None
        gateway = str(self.subnet.network_address + _LOSS_GATEWAY)
        for src, dst in ((a, b), (b, a)):
            target = f"{self.address(dst)}/32"
            if kind == "blackhole":
                ip("route", "replace", "blackhole", target, ns=self.namespace(src))
            else:
                ip("route", "replace", target, "via", gateway, "dev", "eth0",
                   ns=self.namespace(src))
        self.cuts[pair] = kind

    def mend(self, a: int, b: int) -> None:
        """Undo the cut between `a` and `b`, if any."""
        pair = frozenset((a, b))
        if self.cuts.pop(pair, None) is None:
            return
        for src, dst in ((a, b), (b, a)):
            ip("route", "del", f"{self.address(dst)}/32", ns=self.namespace(src), check=False)

    def partition(self, groups: Sequence[Iterable[int]], kind: CutKind = "blackhole") -> None:
        """Cut every pair of nodes in different `groups` (nodes in none are cut from all)."""
        side = {i: n for n, group in enumerate(groups) for i in group}
        for a, b in itertools.combinations(self.nodes, 2):
            if side.get(a, -a) != side.get(b, -b):
                self.cut(a, b, kind)

    def heal(self) -> None:
        """Mend every cut."""
        for pair in list(self.cuts):
            a, b = sorted(pair)
            self.mend(a, b)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that no route or address here overlaps."""
    used = []
    for line in ip("-4", "route", "show", "table", "all", check=False).stdout.splitlines() + \
            ip("-4", "-o", "addr", "show", check=False).stdout.split("\n"):
        for word in re.findall(r"\d+\.\d+\.\d+\.\d+(?:/\d+)?", line):
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(word, strict=False))
    with _lock:
        taken = {n.subnet for n in _live.values() if n.subnet is not None}
    start = os.getpid() % 200
    for k in range(4000):
        second, third = 100 + (start + k // 250) % 150, (start + k) % 250
        net = ipaddress.ip_network(f"10.{second}.{third}.0/24")
        if net not in taken and not any(net.overlaps(u) for u in used
                                        if u.prefixlen > 0 and u.prefixlen >= 8):
            return net
    raise NetnsError("no free /24 in 10.0.0.0/8 for the test network")
