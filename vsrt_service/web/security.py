"""What the web layer accepts, from whom, and what it lets out.

- Host check: a DNS-rebinding page reaches this server under the attacker's own name, so a
  request must name an IP literal, `localhost`, or one of `server.allowed_hosts`.
- Cross-site requests: a page on another site can POST forms, text and multipart without a
  preflight. State-changing requests from a browser (which sends `Origin` or
  `Sec-Fetch-Site`) must come from this server's own origin or `server.cors_origins`; request
  bodies are JSON or multipart. Scripts send neither header and are not affected.
- The client's address is the peer's, or behind `server.trusted_proxies` the right-most
  `X-Forwarded-For` hop no trusted proxy vouches for; handlers see it as `request.remote`.
- Security headers on every response (server paths in messages: core/redact.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from vsrt_service.core.config import ServerSettings
from vsrt_service.web.errors import error_response

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: The only request bodies the API reads; anything else (text/plain, forms) is what a
#: cross-site page can send without a preflight.
BODY_TYPES = frozenset({"application/json", "multipart/form-data"})
DEFAULT_PORTS = {"http": 80, "https": 443}

#: The one inline style the UI needs: the <style> wavesurfer.js (vendored) writes into its
#: waveform's shadow root, with the waveform's height (static/waveform.js WAVE_HEIGHT) in it.
#: Allowed by hash, not 'unsafe-inline'; tests/test_player_ui.py recomputes it from the
#: vendored source.
WAVESURFER_STYLE = "'sha256-Y/8t1dAKa3ay+RZEiEFEDr8dFiQhpaFvYXXUfT3p6ZU='"

#: The UI is same-origin module scripts and stylesheets with no inline code but that style; it
#: sets styles through CSSOM (not style attributes), its favicon is a data: URL, the player
#: streams same-origin media, and downloads open blob: URLs by navigation, which no fetch
#: directive governs.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        f"style-src 'self' {WAVESURFER_STYLE}",
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


# --- addresses and names -----------------------------------------------------------------------


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """IPs and CIDRs (`10.0.0.0/8`, `127.0.0.1`); a bad entry raises ValueError."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


def _address(text: str) -> Address | None:
    try:
        ip = ipaddress.ip_address(text.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return ip


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then the right-most
    X-Forwarded-For hop that is not a trusted proxy itself (hops further left are whatever the
    client wrote, so they are never believed)."""

    def is_trusted(text: str) -> bool:
        ip = _address(text)
        return ip is not None and any(ip in net for net in trusted)

    client = peer or "?"
    if not is_trusted(client):
        return client
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        client = hop
        if not is_trusted(hop):
            break
    ip = _address(client)
    return str(ip) if ip is not None else client


def _host_name(host: str) -> str:
    """A Host header's name or address: lowercased, without port, brackets or trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def host_allowed(host: str, names: frozenset[str]) -> bool:
    """IP literals and `localhost` always (rebinding needs a name the attacker's DNS answers);
    other names only as configured (`example.org`, `.example.org` with its subdomains, `*`)."""
    if "*" in names:
        return True
    name = _host_name(host)
    if name == "localhost" or _address(name) is not None:
        return True
    return name in names or any(n.startswith(".") and (name == n[1:] or name.endswith(n)) for n in names)


def same_origin(origin: str, host: str) -> bool:
    """Whether a browser's Origin names the server the Host header names. Schemes are not
    compared: behind a TLS-terminating proxy an https page's requests arrive as http."""
    try:
        page = urlsplit(origin)
        server = urlsplit(f"//{host}")
        page_port = page.port or DEFAULT_PORTS.get(page.scheme)
        server_port = server.port or DEFAULT_PORTS.get(page.scheme)
    except ValueError:
        return False
    return bool(page.hostname) and (page.hostname, page_port) == (server.hostname, server_port)


# --- the middleware ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Exposure:
    """The server settings the checks use, parsed once per app."""

    allowed_hosts: frozenset[str]
    cors_origins: frozenset[str]
    trusted_proxies: tuple[Network, ...]

    @classmethod
    def of(cls, server: ServerSettings) -> Exposure:
        names = {name.strip().lower().rstrip(".") for name in server.allowed_hosts}
        if server.host and _address(server.host) is None:  # told to listen on a name: it answers to it
            names.add(server.host.lower().rstrip("."))
        return cls(frozenset(names), frozenset(server.cors_origins), parse_networks(server.trusted_proxies))

    def cross_site(self, request: web.Request) -> str | None:
        """Why a state-changing request is refused as cross-site, or None."""
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None:
            if "*" in self.cors_origins or origin in self.cors_origins:
                return None
            if same_origin(origin, request.headers.get(hdrs.HOST, "")):
                return None
            site = f"a page at {origin}"
        elif request.headers.get("Sec-Fetch-Site") == "cross-site":
            site = "a page on another site"
        else:
            return None  # not a browser, or the browser's own navigation
        return (
            f"{request.method} from {site} is refused; to let pages there use this API, "
            "add their origin to server.cors_origins"
        )

    def middleware(self) -> Middleware:
        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            """Host, Origin and body checks before anything else runs; then the real client."""
            host = request.headers.get(hdrs.HOST)
            if host is not None and not host_allowed(host, self.allowed_hosts):
                return error_response(
                    421,
                    "host_not_allowed",
                    f"this server does not answer to the name {_host_name(host)!r}; if that is "
                    "its name, add it to server.allowed_hosts",
                )
            if request.method in STATE_CHANGING:
                refused = self.cross_site(request)
                if refused:
                    return error_response(403, "cross_origin", refused)
                if request.body_exists and request.content_type not in BODY_TYPES:
                    return error_response(
                        415,
                        "unsupported_media_type",
                        "send the request body as application/json (Content-Type: application/json;"
                        " curl: --json), or as multipart/form-data for uploads",
                    )
            if self.trusted_proxies:
                forwarded = request.headers.getall("X-Forwarded-For", [])
                request = request.clone(
                    remote=client_address(request.remote, forwarded, self.trusted_proxies)
                )
            return await handler(request)

        return guard


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, errors, files and event streams included."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
