"""Which outgoing HTTP targets vsrt may call (webhooks): the SSRF guard, pure where it can be.

A URL someone else gave us must not reach this machine or its network: only http(s), and
every address the host resolves to is checked (loopback, private, link-local, multicast,
reserved, unspecified, other non-global ranges; IPv4-mapped IPv6 judged as its IPv4) unless the
operator allowed it (`webhooks.allow_private`). The caller then connects to the checked
address itself, so a second DNS answer cannot switch the target (rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Longer URLs are refused: nobody needs them and they fill logs and rows.
MAX_URL_CHARS = 2048
SCHEMES = ("http", "https")
#: NAT64's well-known prefix carries an IPv4 address in its last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class TargetRefused(ValueError):
    """A URL or address that may not be called; the message says why, for a person."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # lowercased, IPv6 without brackets or zone
    port: int


@dataclass(frozen=True)
class Allowance:
    """What `webhooks.allow_private` lets through although it is not public."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts


def parse_allowance(entries: tuple[str, ...] | list[str]) -> Allowance:
    """IPs or CIDRs become networks, anything else a host name; ValueError names a bad entry."""
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    for raw in entries:
        entry = raw.strip()
        if not entry:
            raise ValueError("an empty entry")
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        name = entry.lower().rstrip(".")
        if "/" in name or not all(part and part.replace("-", "").isalnum() for part in name.split(".")):
            raise ValueError(f"{entry!r} is neither an IP address, a network (10.0.0.0/8) nor a host name")
        hosts.add(name)
    return Allowance(tuple(networks), frozenset(hosts))


def parse_target(url: str) -> Target:
    """The scheme, host and port of an http(s) URL without credentials; TargetRefused otherwise."""
    if not isinstance(url, str) or not url.strip():
        raise TargetRefused("the URL is empty")
    if len(url) > MAX_URL_CHARS:
        raise TargetRefused(f"the URL is longer than {MAX_URL_CHARS} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise TargetRefused("the URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"the URL is not valid: {exc}") from None
    if parts.scheme.lower() not in SCHEMES:
        raise TargetRefused("only http:// and https:// URLs can be called")
    if parts.username is not None or parts.password is not None:
        # The URL is shown with the job's settings: a password in it would leak.
        raise TargetRefused("the URL must not contain a user name or password")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise TargetRefused("the URL has no host")
    host = host.split("%", 1)[0]  # an IPv6 zone id names an interface of this machine
    scheme = parts.scheme.lower()
    return Target(scheme, host, port or (443 if scheme == "https" else 80))


def literal_address(host: str) -> IPAddress | None:
    """The address a host written as a number stands for (also the forms inet_aton accepts,
    such as 2130706433 or 0x7f.1, which resolvers take as IPv4); None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if all(part and (part.isdigit() or part.lower().startswith("0x")) for part in host.split(".")):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def address_refusal(address: IPAddress | str, allow: Allowance = Allowance()) -> str | None:
    """Why this address may not be called (None: it may): what kind of address it is."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    if any(ip in net for net in allow.networks):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if embedded is not None:
            return address_refusal(embedded, allow)
    for kind, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
    ):
        if flag:
            return f"{ip} is a {kind} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def is_local_name(host: str) -> bool:
    """Names that always mean this machine (RFC 6761), whatever DNS says."""
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def literal_refusal(url: str, allow: Allowance = Allowance()) -> str | None:
    """What can be refused without DNS (at submit): a bad URL, or a host that is a refused
    literal address or localhost. None when only delivery-time resolution can tell."""
    try:
        target = parse_target(url)
    except TargetRefused as exc:
        return str(exc)
    if allow.allows_host(target.host):
        return None
    if is_local_name(target.host):
        # localhost resolves to loopback; an allowed loopback network lets it through.
        return address_refusal("127.0.0.1", allow) and f"{target.host} is this machine"
    ip = literal_address(target.host)
    return address_refusal(ip, allow) if ip is not None else None


def checked_addresses(target: Target, addresses: list[str], allow: Allowance = Allowance()) -> list[str]:
    """The resolved addresses that may be called (all when the host itself is allowed);
    TargetRefused naming the first refusal when none may."""
    if allow.allows_host(target.host):
        return addresses
    if not addresses:
        raise TargetRefused(f"{target.host} has no address")
    reasons = [(a, address_refusal(a, allow)) for a in addresses]
    good = [a for a, why in reasons if why is None]
    if not good:
        raise TargetRefused(f"{target.host} refused: {reasons[0][1]} (allow it in webhooks.allow_private)")
    return good
