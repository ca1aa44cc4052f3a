"""Linux network namespaces as separate hosts, for tests that run ``bftd`` over a real
(emulated) network: one namespace per host, each with one veth link to a bridge in a hub
namespace of its own, ``tc netem`` delay and loss on the links, and partitions made with
nftables, iptables or (where neither is usable) blackhole routes.

The bridge lives in a dedicated hub namespace, not in the root namespace: the whole topology
(bridge, veths, qdiscs, rules, routes) then exists only inside namespaces created by this
run, so it cannot clash with the host's interfaces, firewall (br_netfilter would send bridged
frames through the host's iptables) or with another run's interfaces (interface names are
per namespace; only namespace names are global, and they carry the pid and a random tag),
and deleting the namespaces removes every piece of it. Nothing in the root namespace needs
to reach the hosts: the test talks to them with ``ip netns exec`` (client commands) and with
sockets created inside a host's namespace (:meth:`Topology.socket`, metrics scrapes).

Only for root on Linux; :func:`unavailable_reason` says why not elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field

import trio
from processes import read_metrics

#: setns(2) namespace type of a network namespace.
CLONE_NEWNET = 0x40000000
#: Every ``ip``/``tc``/``nft`` command of the set-up must finish within this many seconds.
COMMAND_TIMEOUT = 15.0
#: The hosts' subnet: host i of a topology gets SUBNET.(FIRST_HOST + i)/24.
SUBNET = "10.77.0"
PREFIX_LENGTH = 24
FIRST_HOST = 10
#: The host-side interface of each host's link.
HOST_INTERFACE = "eth0"
BRIDGE = "br0"
#: nftables table holding a partition (in the hub namespace, bridge family).
NFT_TABLE = "bftd_partition"
#: nftables table of the loss fallback where netem is missing (hub namespace, bridge).
NFT_LOSS_TABLE = "bftd_loss"
#: Environment variable forcing a partition mechanism: nft, iptables or route.
MECHANISM_ENV = "BFTD_NETNS_PARTITION"
MECHANISMS = ("nft", "iptables", "route")


class CommandFailed(RuntimeError):
    """A set-up command exited non-zero (the message carries its argv and stderr)."""


def run(argv: list[str], *, stdin: str | None = None) -> str:
    """Run ``argv``; its stdout, or :class:`CommandFailed` with its stderr."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CommandFailed(f"{' '.join(argv)}: {error}") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise CommandFailed(f"{' '.join(argv)}: exit {done.returncode}: "
                            f"{message[0] if message else ''}")
    return done.stdout


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _libc_setns():  # type: ignore[no-untyped-def]
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name, use_errno=True)
    setns = libc.setns  # AttributeError where libc has none
    setns.argtypes = [ctypes.c_int, ctypes.c_int]
    setns.restype = ctypes.c_int
    return setns


def unique_prefix() -> str:
    """Namespace name prefix of one run: pid and a random tag, so parallel runs (and a pid
    reused after a crashed run) never clash."""
    return f"bftdnt-{os.getpid()}-{secrets.token_hex(3)}"


def unavailable_reason() -> str | None:
    """None when this process can build a :class:`Topology`; else a one-line reason."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_NET_ADMIN); not root"
    if shutil.which("ip") is None:
        return "iproute2 'ip' is not installed"
    try:
        _libc_setns()
    except (OSError, AttributeError) as error:
        return f"libc setns(2) is not available: {_first_line(error)}"
    probe = f"{unique_prefix()}-probe"
    try:
        run(["ip", "netns", "add", probe])
    except CommandFailed as error:
        return f"'ip netns add' failed: {_first_line(error)}"
    try:
        run(["ip", "-n", probe, "link", "add", "pbr", "type", "bridge"])
        run(["ip", "-n", probe, "link", "add", "pa", "type", "veth", "peer", "name", "pb"])
        run(["ip", "-n", probe, "link", "set", "pa", "master", "pbr"])
    except CommandFailed as error:
        return f"no veth/bridge support in network namespaces: {_first_line(error)}"
    finally:
        try:
            run(["ip", "netns", "delete", probe])
        except CommandFailed:
            pass
    return None


@dataclass(frozen=True)
class Host:
    """One emulated host: its namespace, its address and its bridge port in the hub."""

    label: str
    namespace: str
    address: str
    hub_port: str


@dataclass(frozen=True)
class Partition:
    """One host cut off from every other host; :meth:`Topology.heal` undoes it."""

    host: Host
    mechanism: str
    #: Commands that undo it (run in order by heal).
    undo: tuple[tuple[str, ...], ...]


@dataclass
class Topology:
    """Hosts (one namespace each) on one bridge, created by :meth:`create`, removed by
    :meth:`destroy` (idempotent; safe after a partial create)."""

    labels: list[str]
    #: ``tc netem`` arguments for every host's uplink (host -> bridge), e.g.
    #: ``["delay", "20ms", "5ms", "loss", "1%"]``; None: no netem.
    netem: list[str] | None = None
    prefix: str = field(default_factory=unique_prefix)
    hosts: dict[str, Host] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    #: What happened to netem ("applied: ..." or "skipped: reason").
    netem_note: str = ""

    @property
    def hub(self) -> str:
        return f"{self.prefix}-hub"

    def create(self) -> None:
        self._add_namespace(self.hub)
        run(["ip", "-n", self.hub, "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "-n", self.hub, "link", "set", BRIDGE, "up"])
        for index, label in enumerate(self.labels):
            namespace = f"{self.prefix}-{label}"
            host = Host(label, namespace, f"{SUBNET}.{FIRST_HOST + index}", f"p{index}")
            self._add_namespace(namespace)
            # Both ends are created where they belong: nothing passes through the root
            # namespace, so interface names cannot clash with other runs or the host.
            run(["ip", "-n", self.hub, "link", "add", host.hub_port, "type", "veth", "peer",
                 "name", HOST_INTERFACE, "netns", namespace])
            run(["ip", "-n", self.hub, "link", "set", host.hub_port, "master", BRIDGE])
            run(["ip", "-n", self.hub, "link", "set", host.hub_port, "up"])
            run(["ip", "-n", namespace, "addr", "add", f"{host.address}/{PREFIX_LENGTH}",
                 "dev", HOST_INTERFACE])
            run(["ip", "-n", namespace, "link", "set", HOST_INTERFACE, "up"])
            # Loopback: each node serves its metrics on 127.0.0.1 of its own namespace.
            run(["ip", "-n", namespace, "link", "set", "lo", "up"])
            self.hosts[label] = host
        self._apply_netem()

    def _add_namespace(self, namespace: str) -> None:
        run(["ip", "netns", "add", namespace])
        self.created.append(namespace)

    def _apply_netem(self) -> None:
        if self.netem is None:
            self.netem_note = "skipped: not requested"
            return
        if shutil.which("tc") is None:
            self.netem_note = "skipped: 'tc' is not installed (links without delay or loss)"
            return
        try:
            for host in self.hosts.values():
                run(["ip", "netns", "exec", host.namespace, "tc", "qdisc", "add", "dev",
                     HOST_INTERFACE, "root", "netem", *self.netem])
        except CommandFailed as error:
            for host in self.hosts.values():  # all links alike, or none
                try:
                    run(["ip", "netns", "exec", host.namespace, "tc", "qdisc", "del", "dev",
                         HOST_INTERFACE, "root"])
                except CommandFailed:
                    pass
            self._loss_without_netem(f"netem unavailable: {_first_line(error)}")
            return
        self.netem_note = f"applied: netem {' '.join(self.netem)} on every host's uplink"

    def _loss_without_netem(self, why: str) -> None:
        """Where netem is missing (a kernel without sch_netem): the loss part alone, with an
        nftables rule in the hub dropping that share of the frames each host sends (nft
        ``numgen random``); the delay part cannot be had without netem."""
        loss = None
        if self.netem is not None and "loss" in self.netem[:-1]:
            loss = self.netem[self.netem.index("loss") + 1].rstrip("%")
        if loss is None or not loss.isdigit() or shutil.which("nft") is None:
            self.netem_note = f"skipped: {why}; links without delay or loss"
            return
        rules = (f"table bridge {NFT_LOSS_TABLE} {{\n"
                 f"  chain forward {{ type filter hook forward priority -10; policy accept;\n"
                 f"    numgen random mod 100 < {loss} counter drop\n"
                 f"  }}\n}}\n")
        try:
            run(["ip", "netns", "exec", self.hub, "nft", "-f", "-"], stdin=rules)
        except CommandFailed as error:
            self.netem_note = (f"skipped: {why}; nftables loss unavailable too "
                               f"({_first_line(error)}); links without delay or loss")
            return
        self.netem_note = (f"partial: {why}; delay skipped; loss {loss}% of the frames "
                           f"crossing the bridge dropped by nftables numgen in the hub")

    def destroy(self) -> list[str]:
        """Delete every namespace this topology created (leaves first, the hub last);
        everything inside them (veths, bridge, qdiscs, rules, routes) goes with them.
        Returns the errors met, if any (teardown goes on past them)."""
        errors = []
        for namespace in reversed(self.created):
            try:
                run(["ip", "netns", "delete", namespace])
            except CommandFailed as error:
                errors.append(_first_line(error))
        self.created.clear()
        return errors

    def exec_argv(self, label: str, argv: list[str]) -> list[str]:
        """``argv`` run inside host ``label``'s namespace."""
        return ["ip", "netns", "exec", self.hosts[label].namespace, *argv]

    def socket(self, label: str) -> socket.socket:
        """A TCP socket created inside host ``label``'s namespace (a socket stays in the
        namespace it was created in). Made on a short-lived thread of its own, so that no
        other thread (trio's worker threads included) ever changes namespace."""
        path = f"/run/netns/{self.hosts[label].namespace}"
        made: list[socket.socket] = []
        failed: list[BaseException] = []

        def enter_and_make() -> None:
            try:
                setns = _libc_setns()
                with open(path, "rb") as handle:
                    if setns(handle.fileno(), CLONE_NEWNET) != 0:
                        number = ctypes.get_errno()
                        raise OSError(number, f"setns({path}): {os.strerror(number)}")
                made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            except (OSError, AttributeError) as error:  # handed to the caller
                failed.append(error)

        thread = threading.Thread(target=enter_and_make, name=f"netns-{label}")
        thread.start()
        thread.join(COMMAND_TIMEOUT)
        if failed:
            raise failed[0]
        if not made:
            raise OSError(f"no socket made in {path}")
        return made[0]

    # -- partitions --------------------------------------------------------------------------

    def mechanism(self) -> tuple[str, str]:
        """The partition mechanism to use and why: nftables if usable, else iptables, else
        blackhole routes; ``$BFTD_NETNS_PARTITION`` (nft, iptables, route) forces one."""
        forced = os.environ.get(MECHANISM_ENV, "").strip()
        if forced:
            if forced not in MECHANISMS:
                raise ValueError(f"{MECHANISM_ENV}={forced!r}: not one of {MECHANISMS}")
            return forced, f"forced by {MECHANISM_ENV}"
        notes = []
        if shutil.which("nft") is None:
            notes.append("nft not installed")
        else:
            try:
                run(["ip", "netns", "exec", self.hub, "nft", "-f", "-"],
                    stdin="table bridge bftd_probe {}\ndelete table bridge bftd_probe\n")
                return "nft", "nftables usable"
            except CommandFailed as error:
                notes.append(f"nft unusable: {_first_line(error)}")
        if shutil.which("iptables") is None:
            notes.append("iptables not installed")
        else:
            first = next(iter(self.hosts.values()))
            try:
                run(["ip", "netns", "exec", first.namespace, "iptables", "-w", "-S"])
                return "iptables", "; ".join([*notes, "iptables usable"])
            except CommandFailed as error:
                notes.append(f"iptables unusable: {_first_line(error)}")
        return "route", "; ".join([*notes, "fallback: blackhole routes"])

    def partition(self, label: str, mechanism: str) -> Partition:
        """Cut host ``label`` off from every other host, both directions, with
        ``mechanism``: nft (a bridge-family table in the hub dropping every frame in or out
        of the host's bridge port: the switch partitions), iptables (DROP on the host's link
        in its INPUT and OUTPUT chains) or route (blackhole /32 routes on both sides: the
        host to every other host, every other host to it)."""
        host = self.hosts[label]
        undo: list[tuple[str, ...]] = []
        if mechanism == "nft":
            rules = (f"table bridge {NFT_TABLE} {{\n"
                     f"  chain forward {{ type filter hook forward priority 0; policy accept;\n"
                     f'    iifname "{host.hub_port}" counter drop\n'
                     f'    oifname "{host.hub_port}" counter drop\n'
                     f"  }}\n}}\n")
            run(["ip", "netns", "exec", self.hub, "nft", "-f", "-"], stdin=rules)
            undo.append(("ip", "netns", "exec", self.hub, "nft", "delete", "table", "bridge",
                         NFT_TABLE))
        elif mechanism == "iptables":
            for chain, direction in (("INPUT", "-i"), ("OUTPUT", "-o")):
                rule = [chain, direction, HOST_INTERFACE, "-j", "DROP"]
                run(["ip", "netns", "exec", host.namespace, "iptables", "-w", "-I", *rule])
                undo.append(("ip", "netns", "exec", host.namespace, "iptables", "-w", "-D",
                             *rule))
        elif mechanism == "route":
            for other in self.hosts.values():
                if other is host:
                    continue
                for namespace, target in ((host.namespace, other.address),
                                          (other.namespace, host.address)):
                    run(["ip", "-n", namespace, "route", "add", "blackhole", f"{target}/32"])
                    undo.append(("ip", "-n", namespace, "route", "del", "blackhole",
                                 f"{target}/32"))
        else:
            raise ValueError(f"unknown partition mechanism {mechanism!r}")
        return Partition(host, mechanism, tuple(undo))

    def heal(self, partition: Partition) -> int | None:
        """Undo ``partition``; the packets it dropped where the mechanism counts them (nft,
        iptables), else None."""
        dropped = None
        if partition.mechanism == "nft":
            listed = run(["ip", "netns", "exec", self.hub, "nft", "list", "table", "bridge",
                          NFT_TABLE])
            dropped = _counted_packets(listed)
        elif partition.mechanism == "iptables":
            listed = run(["ip", "netns", "exec", partition.host.namespace, "iptables", "-w",
                          "-L", "-v", "-n", "-x"])
            dropped = sum(int(line.split()[0]) for line in listed.splitlines()
                          if line.split()[2:3] == ["DROP"])
        for argv in partition.undo:
            run(list(argv))
        return dropped

    def lost_frames(self) -> int | None:
        """Frames dropped so far by the nftables loss fallback (None where not in use)."""
        try:
            listed = run(["ip", "netns", "exec", self.hub, "nft", "list", "table", "bridge",
                          NFT_LOSS_TABLE])
        except CommandFailed:
            return None
        return _counted_packets(listed)


def _counted_packets(nft_listing: str) -> int:
    """The sum of the ``counter packets N`` of an ``nft list`` output."""
    words = nft_listing.split()
    return sum(int(words[i + 2]) for i, word in enumerate(words[:-2])
               if word == "counter" and words[i + 1] == "packets")


async def scrape(topology: Topology, label: str, port: int) -> dict[str, float] | None:
    """``GET /metrics`` on 127.0.0.1:port *inside* host ``label``'s namespace, as {sample
    name with labels: value} (the format of tests/processes.py's scrape); None if down."""
    try:
        sock = trio.socket.from_stdlib_socket(topology.socket(label))
    except OSError:
        return None
    try:
        with trio.fail_after(5):
            await sock.connect(("127.0.0.1", port))
    except (trio.TooSlowError, OSError):
        sock.close()
        return None
    async with trio.SocketStream(sock) as stream:
        try:
            with trio.fail_after(5):
                return await read_metrics(stream)
        except trio.TooSlowError:
            return None
