"""Worker "hosts" on this one machine: Linux network namespaces (``ip netns``), each joined to this (the
root) namespace by a veth pair, so that a test can cut a host off the network and bring it back, or make
one address unreachable from one host, as a switch or a firewall would.

Each host gets a private /29 that this module picks and checks is unused on this machine: ``.1`` is this
machine's address for Redis, ``.3`` its address for the object store, ``.2`` the host's own. Nothing is
routed off this machine: the namespaces have no default route. Making namespaces needs root
(CAP_NET_ADMIN); ``why_not()`` says why it cannot be done here.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
import uuid
from dataclasses import dataclass


def _ip(*args: str) -> str:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def why_not() -> str | None:
    """Why network namespaces cannot be made here (None: they can)."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "making network namespaces (ip netns) needs root"
    probe = f"tfprobe{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as e:
        return f"cannot make a network namespace: {e}"
    _ip("netns", "delete", probe)
    return None


@dataclass
class Host:
    name: str  # its namespace
    link: str  # this machine's end of its veth pair
    redis: str  # this machine's address for Redis, as the host sees it
    store: str  # this machine's address for the object store, as the host sees it

    def wrap(self) -> list[str]:
        """The prefix that runs a command on this host."""
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        """Pull its cable: packets to and from it are dropped from now on, and connections hang."""
        _ip("link", "set", self.link, "down")

    def restore(self) -> None:
        _ip("link", "set", self.link, "up")

    def block(self, address: str) -> None:
        """Make ``address`` unreachable from this host only (connections fail: no route to host)."""
        _ip("-n", self.name, "route", "add", "unreachable", f"{address}/32")

    def unblock(self, address: str) -> None:
        _ip("-n", self.name, "route", "del", "unreachable", f"{address}/32")


def _free_net(taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A /24 in 10.213.0.0/16 that overlaps no address or route of this machine."""
    used = []
    for line in _ip("-4", "-o", "addr").splitlines() + _ip("-4", "route").splitlines():
        for word in line.split():
            try:
                used.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                continue
    candidates = list(range(256))
    random.shuffle(candidates)
    for third in candidates:
        net = ipaddress.ip_network(f"10.213.{third}.0/24")
        if not any(net.overlaps(u) for u in used + taken if u.prefixlen > 0):
            return net
    raise RuntimeError("no free /24 in 10.213.0.0/16 on this machine")


class Hosts:
    """``n`` hosts, made on entry and removed on exit (a veth pair goes with its namespace)."""

    def __init__(self, n: int = 2):
        self.n = n
        self.hosts: list[Host] = []

    def __enter__(self) -> list[Host]:
        tag = uuid.uuid4().hex[:6]
        net = _free_net([])
        try:
            for i in range(self.n):
                sub = list(ipaddress.ip_network(f"{net.network_address + 8 * i}/29").hosts())
                here, there, store = sub[0], sub[1], sub[2]
                host = Host(name=f"tf{tag}h{i}", link=f"tf{tag}r{i}", redis=str(here), store=str(store))
                _ip("netns", "add", host.name)
                self.hosts.append(host)
                _ip("link", "add", host.link, "type", "veth", "peer", "name", f"tf{tag}p{i}")
                _ip("link", "set", f"tf{tag}p{i}", "netns", host.name)
                _ip("addr", "add", f"{here}/29", "dev", host.link)
                _ip("addr", "add", f"{store}/29", "dev", host.link)
                _ip("link", "set", host.link, "up")
                _ip("-n", host.name, "addr", "add", f"{there}/29", "dev", f"tf{tag}p{i}")
                _ip("-n", host.name, "link", "set", f"tf{tag}p{i}", "up")
                _ip("-n", host.name, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self.hosts

    def __exit__(self, *_) -> None:
        for host in self.hosts:
            subprocess.run(["ip", "netns", "delete", host.name], capture_output=True)
            subprocess.run(["ip", "link", "delete", host.link], capture_output=True)
        self.hosts = []
