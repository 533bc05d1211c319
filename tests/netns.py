"""A network namespace joined to this one by a veth pair, with a rate-limited link toward it.

    with ShapedLink(rate="300kbit") as link:       # root and `ip` needed; see `unavailable()`
        link.host_address   # 10.213.x.1, in this namespace: give it to the server's ICE addresses
        link.peer_address   # 10.213.x.2, inside link.namespace
        link.qdisc_stats()  # what was offered to the link toward the namespace: sent + dropped

    with ShapedLink(rate=None) as link:            # no limit; the UDP path can be broken
        link.cut_udp()      # every UDP datagram either way is dropped silently (TCP still flows)
        link.restore_udp()

The limit is `tc qdisc ... tbf` on the host end (netem is not available on this kernel), so it
shapes what this namespace sends to the other one. The cut is an htb qdisc on both ends whose u32
filter sends UDP to a class with a zero-length fifo (this kernel has no tc drop action, nft or
iptables). Everything is removed on exit, even after a failure: deleting the namespace deletes the pair.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time


def unavailable() -> str | None:
    """Why a shaped link cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the '{tool}' command (iproute2) is not installed"
    return None


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


class ShapedLink:
    def __init__(self, *, rate: str | None, burst: str = "8kb", latency: str = "100ms"):
        tag = f"{os.getpid() % 100000}{random.randrange(100)}"
        self.namespace = f"stoa-shaped-{tag}"
        self.host_if, self.peer_if = f"sh{tag}h"[:15], f"sh{tag}p"[:15]
        self.rate, self.burst, self.latency = rate, burst, latency
        self.host_address = self.peer_address = ""

    def __enter__(self) -> "ShapedLink":
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _free_subnet(self) -> int:
        used = _run("ip", "-o", "-4", "addr", "show")
        for _ in range(100):
            third = random.randrange(1, 255)
            if f"10.213.{third}." not in used:
                return third
        raise RuntimeError("no free 10.213.x.0/30 subnet")

    def _create(self) -> None:
        third = self._free_subnet()
        self.host_address, self.peer_address = f"10.213.{third}.1", f"10.213.{third}.2"
        _run("ip", "netns", "add", self.namespace)
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
        _run("ip", "link", "set", self.peer_if, "netns", self.namespace)
        # No IPv6 on the link: a link-local address finishing duplicate detection a second after the link
        # comes up is a network change to Chromium, which then fails a page load (ERR_NETWORK_CHANGED).
        _run("sysctl", "-qw", f"net.ipv6.conf.{self.host_if}.disable_ipv6=1")
        _run("ip", "netns", "exec", self.namespace, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        _run("ip", "netns", "exec", self.namespace, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        _run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        ns = ("ip", "-n", self.namespace)
        _run(*ns, "addr", "add", f"{self.peer_address}/30", "dev", self.peer_if)
        _run(*ns, "link", "set", self.peer_if, "up")
        _run(*ns, "link", "set", "lo", "up")
        self._wait_carrier()
        if self.rate:
            _run("tc", "qdisc", "add", "dev", self.host_if, "root", "tbf", "rate", self.rate,
                 "burst", self.burst, "latency", self.latency)

    def _wait_carrier(self, timeout: float = 5.0) -> None:
        """Until both ends have carrier, so that no link event reaches a browser started right after."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = (_run("ip", "-o", "link", "show", self.host_if),
                      _run("ip", "-n", self.namespace, "-o", "link", "show", self.peer_if))
            if all("LOWER_UP" in state for state in states):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.host_if} and {self.peer_if} did not come up in {timeout} s")

    def _ends(self) -> list[tuple[tuple[str, ...], str]]:
        return [(("tc",), self.host_if), (("tc", "-n", self.namespace), self.peer_if)]

    def cut_udp(self) -> None:
        """Drop every UDP datagram between the two ends, silently, until restore_udp()."""
        if self.rate:
            raise RuntimeError("cut_udp() needs a link without a rate limit (rate=None)")
        for tc, dev in self._ends():
            _run(*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1")
            for cls in ("1:1", "1:2"):
                _run(*tc, "class", "add", "dev", dev, "parent", "1:", "classid", cls, "htb", "rate", "10gbit")
            _run(*tc, "qdisc", "add", "dev", dev, "parent", "1:2", "pfifo", "limit", "0")
            _run(*tc, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "u32",
                 "match", "ip", "protocol", "17", "0xff", "flowid", "1:2")

    def restore_udp(self) -> None:
        for tc, dev in self._ends():
            _run(*tc, "qdisc", "del", "dev", dev, "root")

    def exec_prefix(self) -> list[str]:
        """Prepend to a command to run it inside the namespace."""
        return ["ip", "netns", "exec", self.namespace]

    def qdisc_stats(self) -> dict:
        """{"packets": sent, "bytes": sent, "drops": dropped} of the shaped direction so far."""
        stats = json.loads(_run("tc", "-s", "-j", "qdisc", "show", "dev", self.host_if))
        tbf = next(q for q in stats if q.get("kind") == "tbf")
        return {"packets": tbf["packets"], "bytes": tbf["bytes"], "drops": tbf["drops"]}

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=10)
