"""What the service checks before any work: the Host, the API key, the request's size and pace.

``Guard`` is an ASGI middleware in front of the app. It answers before the body is read:
400 for a Host that is not allowed (DNS rebinding, when no key is set), 401 for a missing or
wrong key, 413 for a declared body over the request limit; while the body arrives, 413 as soon
as it passes the limit and 408 when it takes longer than the body deadline. Every response gets
security headers. ``GuardedH11Protocol`` closes connections that send no complete request
headers in time (slow clients holding sockets).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from dataclasses import dataclass

from uvicorn.protocols.http.h11_impl import H11Protocol

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"), (b"cross-origin-resource-policy", b"same-origin")]
# the interactive API docs start Swagger UI with an inline script; its script and styles are served
# from here, so nothing outside is allowed either
DOCS_PATHS = ("/docs",)
DOCS_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; "
            "base-uri 'none'")


@dataclass(frozen=True)
class Limits:
    """Every limit of an upload, checked before the expensive work (reading, decoding)."""

    max_file_bytes: int = 20 * 1024 * 1024  # one file
    max_request_bytes: int = 40 * 1024 * 1024  # the whole request body
    max_files: int = 16
    max_pixels: int = 40_000_000  # one image, as its header declares it (before decoding)
    max_request_pixels: int = 160_000_000  # all images of a request
    body_timeout_s: float = 60.0  # the whole body must arrive within this
    header_timeout_s: float = 10.0  # the request line and headers must arrive within this
    decode_workers: int = 2  # images decoded at once, on threads beside the event loop
    decode_memory_bytes: int = 512 << 20  # what decoding may hold at once (each image's bound from its header)
    max_classify_requests: int = 16  # classify requests in progress at once; beyond: 503 with Retry-After
    retry_after_s: int = 2


def host_of(value: str) -> str:
    """The host name of a Host header, without the port ("[::1]:8000" → "::1")."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def serving_hosts(bind: str, extra: list[str], keyed: bool) -> list[str] | None:
    """The Host names a server answers: with an API key any (None) unless some are given; without
    one, loopback names, the address it listens on (unless a wildcard) and those given."""
    if keyed and not extra:
        return None
    hosts = [*LOOPBACK_HOSTS, *extra]
    if bind not in ("0.0.0.0", "::", ""):
        hosts.append(bind)
    return hosts


class Guard:
    def __init__(self, app, limits: Limits, api_key: str | None = None, allowed_hosts: list[str] | None = None):
        self.app, self.limits, self.api_key = app, limits, api_key
        self.allowed_hosts = None if allowed_hosts is None else {host_of(h) for h in allowed_hosts}
        self.classifying = 0  # classify requests in progress (this event loop's only: no lock needed)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        send = self._with_headers(send, scope["path"])
        refusal = self._refusal(scope["method"], scope["path"], headers)
        if refusal is not None:
            return await _answer(send, *refusal)
        if scope["method"] == "POST" and scope["path"] == "/v1/classify":
            if self.classifying >= self.limits.max_classify_requests:  # before the body is read
                return await _answer(send, 503, f"busy: {self.classifying} classify requests in progress; "
                                     f"try again in {self.limits.retry_after_s} s",
                                     [(b"retry-after", str(self.limits.retry_after_s).encode())])
            self.classifying += 1
            try:
                return await self._guarded(scope, receive, send)
            finally:
                self.classifying -= 1
        return await self._guarded(scope, receive, send)

    async def _guarded(self, scope, receive, send):
        state = {"received": 0, "answered": False, "deadline": time.monotonic() + self.limits.body_timeout_s}

        async def guarded_receive():
            if state["answered"]:
                return {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), max(0.01, state["deadline"] - time.monotonic()))
            except asyncio.TimeoutError:
                await self._cut(send, state, 408, f"the request body took longer than {self.limits.body_timeout_s:g} s")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.limits.max_request_bytes:
                    await self._cut(send, state, 413, f"request larger than {self.limits.max_request_bytes:,} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not state["answered"]:
                await send(message)

        await self.app(scope, guarded_receive, guarded_send)

    def _refusal(self, method: str, path: str, headers: dict) -> tuple[int, str] | None:
        if self.allowed_hosts is not None and host_of(headers.get("host", "")) not in self.allowed_hosts:
            return 400, (f"Host {headers.get('host', '')!r} is not served here; without an API key only "
                         f"{', '.join(sorted(self.allowed_hosts))} are (serve --allowed-host adds one)")
        if self.api_key is not None and path.startswith("/v1/") and method != "OPTIONS":  # CORS preflights carry no key
            given = headers.get("x-api-key", "")
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = given or auth[7:]
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return 401, "missing or wrong API key: send it in the X-API-Key header"
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limits.max_request_bytes:
            return 413, f"request of {int(declared):,} bytes; at most {self.limits.max_request_bytes:,} per request"
        return None

    async def _cut(self, send, state: dict, status: int, detail: str) -> None:
        state["answered"] = True
        # the app may have started its answer: then this one fails, and the connection closes anyway
        with contextlib.suppress(Exception):
            await _answer(send, status, detail)

    @staticmethod
    def _with_headers(send, path: str):
        extra = list(SECURITY_HEADERS)
        policy = DOCS_CSP if path in DOCS_PATHS else CSP
        extra.append((b"content-security-policy", policy.encode()))

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return send_with_headers


async def _answer(send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request headers do not arrive in
    ``header_timeout_s`` (after it opens, and after each response while it is kept alive)."""

    header_timeout_s = Limits.header_timeout_s

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _too_slow(self) -> None:
        idle = self.cycle is None or self.cycle.response_complete  # no request under way
        if idle and not self.transport.is_closing():
            self.transport.close()  # its headers did not arrive in time

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._header_timer.cancel()
        self._arm()

    def connection_lost(self, exc) -> None:
        self._header_timer.cancel()
        super().connection_lost(exc)
