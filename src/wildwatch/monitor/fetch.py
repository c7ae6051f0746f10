"""Fetching what feeds point at, without becoming a way into the machine or the network it sits on.

A feed is named by the user, but the image URLs and redirects inside it are not: a hostile feed
could point the monitor at services that only the machine can reach (blind SSRF) or at device
files. ``Fetcher``:

- fetches http(s) only, and refuses to talk to loopback, private, link-local, multicast and other
  non-public addresses, checked on the address actually connected to (so after DNS resolution,
  and again for every redirect), unless the host is the feed's own (the origin the user named) or
  is in ``allow_hosts`` (names, addresses or networks such as ``192.168.1.0/24``);
- reads local files (a feed on disk, and its images) only when they are regular files of a
  non-zero size under the cap, never /dev, /proc or /sys;
- stops every fetch at ``max_bytes`` and at a total ``deadline_s``, however slowly the server sends.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
import urllib.robotparser
from dataclasses import dataclass
from urllib.parse import urlsplit

from wildwatch import __version__
from wildwatch.errors import DataError, UsageError

USER_AGENT = f"wildwatch-monitor/{__version__} (wildlife-trade monitoring; honours robots.txt)"
SPECIAL_ROOTS = ("/dev", "/proc", "/sys")


class FetchRefused(DataError):
    """A fetch that the policy refuses (an address, a file, a size, a deadline, robots.txt)."""


@dataclass
class Fetched:
    status: int
    headers: dict
    body: bytes
    url: str  # after redirects

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), "")


def origin(url: str) -> tuple[str, int]:
    u = urlsplit(url)
    return (u.hostname or "").lower(), u.port or (443 if u.scheme == "https" else 80)


# IPv6 prefixes whose addresses carry an IPv4 address in their last 32 bits: NAT64 (well-known and
# local-use) and IPv4-compatible (::a.b.c.d); ::ffff:a.b.c.d (mapped) has its own attribute
_EMBEDS_IPV4 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"),
                ipaddress.ip_network("::/96"))


def _is_public(ip: str) -> bool:
    """A global unicast address; an IPv6 address that embeds an IPv4 one (mapped, compatible, NAT64,
    6to4, Teredo) is judged by that IPv4 address, so ``::127.0.0.1`` or ``64:ff9b::7f00:1`` is loopback."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address):
        inner = addr.ipv4_mapped or addr.sixtofour or (addr.teredo[1] if addr.teredo else None)
        if inner is None and any(addr in net for net in _EMBEDS_IPV4):
            inner = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if inner is not None:
            addr = inner
    return addr.is_global and not addr.is_multicast


class Fetcher:
    def __init__(self, allow_hosts: tuple[str, ...] | list[str] = (), trusted: tuple[str, ...] | list[str] = (),
                 timeout_s: float = 20.0, deadline_s: float = 60.0, max_bytes: int = 50 << 20):
        self.allow_names = {h.lower() for h in allow_hosts if not _is_network(h)}
        self.allow_networks = [ipaddress.ip_network(h, strict=False) for h in allow_hosts if _is_network(h)]
        self.trusted = {origin(u) for u in trusted if "://" in u}
        self.timeout_s, self.deadline_s, self.max_bytes = timeout_s, deadline_s, max_bytes

    # -- policy

    def check_peer(self, host: str, port: int, ip: str) -> None:
        """Raise FetchRefused unless the connected address ``ip`` of ``host:port`` may be fetched from."""
        if _is_public(ip) or (host.lower(), port) in self.trusted or host.lower() in self.allow_names:
            return
        addr = ipaddress.ip_address(ip.split("%")[0])
        if ip in self.allow_names or any(addr in n for n in self.allow_networks):
            return
        raise FetchRefused(f"{host}:{port} is at {ip}, a non-public address; refused (a feed may not point the "
                           "monitor at local services; list the host in the monitor's allow_hosts if it is yours)")

    def read_file(self, path: str) -> bytes:
        """A local file: a regular file of 1 byte to ``max_bytes``, outside /dev, /proc and /sys."""
        real = os.path.realpath(path)
        if any(real == r or real.startswith(r + "/") for r in SPECIAL_ROOTS):
            raise FetchRefused(f"{path}: a system file ({real}); only photos and feeds on disk are read")
        try:
            st = os.stat(real)
        except OSError as exc:
            raise FetchRefused(f"{path}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise FetchRefused(f"{path}: not a regular file")
        if st.st_size == 0:
            raise FetchRefused(f"{path}: empty file")
        if st.st_size > self.max_bytes:
            raise FetchRefused(f"{path}: {st.st_size:,} bytes, larger than {self.max_bytes:,}")
        with open(real, "rb") as f:
            data = f.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise FetchRefused(f"{path}: larger than {self.max_bytes:,} bytes")
        return data

    # -- fetching

    def fetch(self, url: str, allow_local: bool = False) -> bytes:
        """The bytes at an http(s) URL, or at a local path when ``allow_local``."""
        if "://" not in url:
            if not allow_local:
                raise UsageError(f"{url}: not an http(s) URL")
            return self.read_file(url)
        return self.fetch_full(url).body

    def fetch_full(self, url: str, headers: dict | None = None) -> Fetched:
        """Status, headers and body of an http(s) URL; a 304 (not modified) comes back as such."""
        if not url.lower().startswith(("http://", "https://")):
            raise UsageError(f"{url}: only http and https URLs are fetched")
        sockets: list[socket.socket] = []
        opener = _opener(self, sockets)
        timer = threading.Timer(self.deadline_s, _shut, args=(sockets,))
        timer.daemon = True
        start = time.monotonic()
        timer.start()
        try:
            req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
            with opener.open(req, timeout=self.timeout_s) as r:
                return Fetched(r.status, dict(r.headers.items()), self._read(r, url, start), r.url)
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                return Fetched(304, dict(exc.headers.items()), b"", url)
            raise
        except (OSError, http.client.HTTPException) as exc:
            if time.monotonic() - start >= self.deadline_s:
                raise FetchRefused(f"{url}: not received within {self.deadline_s:g} s") from None
            refused = _refusal_in(exc)
            if refused is not None:
                raise refused from None
            raise
        finally:
            timer.cancel()

    def _read(self, r, url: str, start: float) -> bytes:
        declared = r.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchRefused(f"{url}: {int(declared):,} bytes, larger than {self.max_bytes:,}")
        chunks: list[bytes] = []
        n = 0
        while True:
            if time.monotonic() - start > self.deadline_s:
                raise FetchRefused(f"{url}: not received within {self.deadline_s:g} s")
            chunk = r.read1(64 << 10) if hasattr(r, "read1") else r.read(64 << 10)
            if not chunk:
                if time.monotonic() - start >= self.deadline_s:  # cut by the deadline, not the end of the body
                    raise FetchRefused(f"{url}: not received within {self.deadline_s:g} s")
                return b"".join(chunks)
            n += len(chunk)
            if n > self.max_bytes:
                raise FetchRefused(f"{url}: larger than {self.max_bytes:,} bytes")
            chunks.append(chunk)


def _is_network(h: str) -> bool:
    try:
        ipaddress.ip_network(h, strict=False)
    except ValueError:
        return False
    return "/" in h


def _shut(sockets: list[socket.socket]) -> None:
    """The deadline: whatever the server is doing, the fetch's sockets stop now."""
    for s in list(sockets):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _refusal_in(exc: BaseException) -> FetchRefused | None:
    """urllib wraps what a connection raises (URLError.reason): find the policy's refusal."""
    seen: object = exc
    for _ in range(4):
        if isinstance(seen, FetchRefused):
            return seen
        if not isinstance(seen, BaseException):
            return None
        reason = getattr(seen, "reason", None)
        seen = reason if isinstance(reason, BaseException) else (seen.__cause__ or seen.__context__)
    return None


def _connection(base, fetcher: Fetcher, sockets: list):
    class Guarded(base):
        def connect(self):
            # before any packet goes out: every address the name resolves to must be allowed ...
            for *_, addr in socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM):
                fetcher.check_peer(self.host, self.port, addr[0])
            super().connect()
            # ... and so must the one actually connected to (the name may resolve differently now)
            sockets.append(self.sock)
            try:
                fetcher.check_peer(self.host, self.port, self.sock.getpeername()[0])
            except FetchRefused:
                self.sock.close()
                raise

    return Guarded


class _Handler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """http and https through guarded connections; redirects come back here, so each is checked."""

    handler_order = 400  # before urllib's own handlers

    def __init__(self, fetcher: Fetcher, sockets: list):
        urllib.request.HTTPSHandler.__init__(self)
        self.fetcher, self.sockets = fetcher, sockets

    def http_open(self, req):
        return self.do_open(_connection(http.client.HTTPConnection, self.fetcher, self.sockets), req)

    def https_open(self, req):
        return self.do_open(_connection(http.client.HTTPSConnection, self.fetcher, self.sockets), req,
                            context=self._context)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects to http(s) only: urllib would also follow one to ftp:// (and log in there)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise FetchRefused(f"{req.full_url}: redirects to {newurl}; only http and https URLs are fetched")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(fetcher: Fetcher, sockets: list) -> urllib.request.OpenerDirector:
    """An opener that speaks http and https through guarded connections and nothing else (no ftp:,
    file: or data: handlers, which ``build_opener`` would add)."""
    opener = urllib.request.OpenerDirector()
    for handler in (_Handler(fetcher, sockets), _HttpOnlyRedirects(), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor(), urllib.request.UnknownHandler()):
        opener.add_handler(handler)
    return opener


class PoliteFetcher:
    """What a crawler of other people's sites owes them, around a ``Fetcher``: robots.txt honoured
    (for wildwatch's User-Agent), at most one request per ``min_interval_s`` to a host, and
    conditional requests (ETag / If-Modified-Since) so an unchanged page costs the site a 304."""

    def __init__(self, fetcher: Fetcher, min_interval_s: float = 1.0):
        self.fetcher, self.min_interval_s = fetcher, min_interval_s
        self._robots: dict[str, urllib.robotparser.RobotFileParser | None] = {}
        self._last: dict[str, float] = {}
        self._cache: dict[str, tuple[str, str, bytes]] = {}  # url -> (etag, last-modified, body)
        self._lock = threading.Lock()
        self.requests = 0  # counted for tests and reports
        self.not_modified = 0

    def _host(self, url: str) -> str:
        u = urlsplit(url)
        return f"{u.scheme}://{u.netloc}"

    def _wait_turn(self, host: str) -> None:
        with self._lock:
            wait = self._last.get(host, -1e9) + self.min_interval_s - time.monotonic()
            self._last[host] = time.monotonic() + max(0.0, wait)
        if wait > 0:
            time.sleep(wait)

    def allowed(self, url: str) -> bool:
        host = self._host(url)
        if host not in self._robots:
            self._wait_turn(host)
            try:
                got = self.fetcher.fetch_full(f"{host}/robots.txt")
                self.requests += 1
                rp = urllib.robotparser.RobotFileParser()
                rp.parse(got.body.decode("utf-8", "replace").splitlines())
                self._robots[host] = rp
            except (OSError, DataError, http.client.HTTPException):
                self._robots[host] = None  # no robots.txt (404) or none readable: nothing is disallowed
        rules = self._robots[host]
        return rules is None or rules.can_fetch(USER_AGENT, url)

    def fetch(self, url: str, allow_local: bool = False) -> bytes:
        if "://" not in url:
            return self.fetcher.fetch(url, allow_local=allow_local)
        return self.fetch_full(url).body

    def fetch_full(self, url: str, conditional: bool = True) -> Fetched:
        if not self.allowed(url):
            raise FetchRefused(f"{url}: the site's robots.txt asks crawlers ({USER_AGENT}) not to fetch it")
        self._wait_turn(self._host(url))
        etag, modified, body = self._cache.get(url, ("", "", b""))
        headers = {}
        if conditional and etag:
            headers["If-None-Match"] = etag
        if conditional and modified:
            headers["If-Modified-Since"] = modified
        got = self.fetcher.fetch_full(url, headers)
        self.requests += 1
        if got.status == 304:
            self.not_modified += 1
            return Fetched(304, got.headers, body, url)
        if got.header("ETag") or got.header("Last-Modified"):
            self._cache[url] = (got.header("ETag"), got.header("Last-Modified"), got.body)
        return got
