"""Alerts: which sightings are sent (policy), where (sinks), and how they survive failures (outbox).

Every alert is a row of the ``outbox`` table, written in the same transaction as its sighting,
one row per sink, with an idempotency key that never changes. A delivery thread sends due rows
and marks them delivered; a failure is retried with exponential backoff; rows survive restarts.
A process killed between sending and marking sends the row again after the restart with the
same key, so the receiver de-duplicates (the webhook's ``Idempotency-Key`` header, the email's
``Message-ID``): each alert reaches each sink once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import smtplib
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as dtime
from email.message import EmailMessage
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from wildwatch.errors import UsageError
from wildwatch.monitor.payloads import Alert, CaseAlert, alert_from_json
from wildwatch.store.cases import case_thumbnail
from wildwatch.store.events import EventStore
from wildwatch.store.outbox import OutboxTable, QueuedAlert

log = logging.getLogger("wildwatch.monitor")

SIGNATURE_HEADER = "X-Wildwatch-Signature"


class AlertPolicy(BaseModel):
    """Which sightings alert. A sighting alerts if its IUCN status is in ``statuses`` or its class
    is in ``species``, its confidence is at least ``min_confidence`` and (for posts) its keyword
    priority at least ``min_priority``. During ``quiet_hours`` (local time, "22:00-06:00") alerts
    wait until the quiet hours end, except for ``urgent_statuses`` and prioritised posts."""

    model_config = ConfigDict(extra="forbid")

    statuses: list[str] = Field(default_factory=lambda: ["CR", "EN", "VU"])
    species: list[str] = Field(default_factory=list)
    min_confidence: float = Field(0.0, ge=0, le=1)
    min_priority: int = Field(0, ge=0)
    quiet_hours: str | None = None
    urgent_statuses: list[str] = Field(default_factory=lambda: ["CR"])

    @field_validator("quiet_hours")
    @classmethod
    def _hours(cls, v):
        if v is not None:
            parse_quiet_hours(v)
        return v

    def wants(self, species: str, status: str, confidence: float, priority: int = 0) -> bool:
        if confidence < self.min_confidence or priority < self.min_priority:
            return False
        return bool(status_categories(status) & set(self.statuses)) or species in self.species

    def not_before(self, now: float, status: str, priority: int = 0) -> float:
        """When an alert made at ``now`` may be sent."""
        if not self.quiet_hours or status_categories(status) & set(self.urgent_statuses) or priority > 0:
            return now
        start, end = parse_quiet_hours(self.quiet_hours)
        local = datetime.fromtimestamp(now)
        t = local.time()
        inside = (start <= t < end) if start < end else (t >= start or t < end)
        if not inside:
            return now
        until = datetime.combine(local.date(), end)  # the next time the quiet hours end
        if until <= local:
            until += timedelta(days=1)
        return until.timestamp()


RED_LIST_ORDER = ("LC", "NT", "VU", "EN", "CR", "EW", "EX")


def status_categories(status: str) -> set[str]:
    """The IUCN categories a status covers: "VU" is {"VU"}; a range such as "NT–CR" (a class that
    mixes species or populations) is every category from NT to CR."""
    parts = [p.strip() for p in status.replace("\u2013", "-").split("-") if p.strip()]
    if len(parts) == 2 and all(p in RED_LIST_ORDER for p in parts):
        a, b = sorted(RED_LIST_ORDER.index(p) for p in parts)
        return set(RED_LIST_ORDER[a:b + 1])
    return set(parts)


def parse_quiet_hours(text: str) -> tuple[dtime, dtime]:
    try:
        a, b = (datetime.strptime(x.strip(), "%H:%M").time() for x in text.split("-"))
    except ValueError as exc:
        raise UsageError(f"quiet_hours must look like '22:00-06:00', got {text!r}") from exc
    if a == b:
        raise UsageError(f"quiet_hours {text!r} is empty")
    return a, b


# ---------------------------------------------------------------- sinks


class DeliveryError(Exception):
    """``retry``: worth trying again later (network, 5xx, 429); otherwise permanent (4xx)."""

    def __init__(self, message: str, retry: bool = True):
        super().__init__(message)
        self.retry = retry


class ConsoleSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["console"] = "console"
    name: str | None = None


class WebhookSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["webhook"] = "webhook"
    name: str | None = None
    url: str
    secret: str | None = None
    secret_env: str | None = Field(None, description="environment variable holding the HMAC secret")
    timeout_s: float = 10.0


class EmailSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["email"] = "email"
    name: str | None = None
    host: str
    port: int = 587
    starttls: bool = True
    ssl: bool = False
    username_env: str | None = None
    password_env: str | None = None
    sender: str
    to: list[str]
    timeout_s: float = 20.0


SinkConfig = ConsoleSinkConfig | WebhookSinkConfig | EmailSinkConfig


class Sink(Protocol):
    """Where alerts go. ``send`` raises ``DeliveryError`` (``retry`` or not) when it could not
    deliver; anything else it raises counts as a failure worth retrying. ``wants_snapshot``: the
    delivery reads the sighting's photo (or the case's) for it."""

    wants_snapshot: bool

    def send(self, alert: Alert, key: str, snapshot: bytes | None) -> None: ...


def sign(secret: str, body: bytes) -> str:
    """The signature header value: ``sha256=`` and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    return hmac.compare_digest(sign(secret, body), header or "")


class ConsoleSink:
    wants_snapshot = False

    def __init__(self, cfg: ConsoleSinkConfig, echo: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.echo = echo or (lambda line: log.warning("%s", line))

    def send(self, alert: Alert, key: str, snapshot: bytes | None) -> None:
        if isinstance(alert, CaseAlert):
            self.echo(f"CASE {alert.case_id} ({alert.why}) score {alert.score:.2f}: {alert.reason}; "
                      f"{alert.posts} posts, {len(alert.accounts)} accounts; {alert.review_url} [{key}]")
            return
        self.echo(f"ALERT {alert.species} ({alert.iucn_status}) at {alert.source} "
                  f"confidence {alert.confidence:.2f} sighting {alert.sighting_id} [{key}]")


class WebhookSink:
    """JSON POST with ``Idempotency-Key`` and an HMAC-SHA256 signature of the body."""

    wants_snapshot = False

    def __init__(self, cfg: WebhookSinkConfig):
        self.cfg = cfg
        self.secret = cfg.secret or (os.environ.get(cfg.secret_env) if cfg.secret_env else None)
        if cfg.secret_env and not self.secret:
            raise UsageError(f"webhook {cfg.url}: environment variable {cfg.secret_env} (the HMAC secret) is not set")

    def send(self, alert: Alert, key: str, snapshot: bytes | None) -> None:
        body = json.dumps(alert.to_json(), sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": key, "User-Agent": "wildwatch-monitor",
                   "X-Wildwatch-Timestamp": str(int(time.time()))}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        req = urllib.request.Request(self.cfg.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as r:
                r.read()
        except urllib.error.HTTPError as exc:
            retry = exc.code >= 500 or exc.code in (408, 425, 429)
            raise DeliveryError(f"{self.cfg.url}: HTTP {exc.code}", retry=retry) from exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise DeliveryError(f"{self.cfg.url}: {getattr(exc, 'reason', exc)}") from exc


class EmailSink:
    """An email per alert, the snapshot attached; ``Message-ID`` is derived from the idempotency key."""

    wants_snapshot = True

    def __init__(self, cfg: EmailSinkConfig):
        self.cfg = cfg
        self.user = os.environ.get(cfg.username_env) if cfg.username_env else None
        self.password = os.environ.get(cfg.password_env) if cfg.password_env else None

    def message(self, alert: Alert, key: str, snapshot: bytes | None) -> EmailMessage:
        m = EmailMessage()
        # the source and names may come from a feed: no line breaks (header injection) reach a header
        m["Subject"] = header_text(f"[wildwatch] {alert.common_name or alert.species} "
                                   f"({alert.iucn_status}) at {alert.source}")
        m["From"] = self.cfg.sender
        m["To"] = ", ".join(self.cfg.to)
        m["Message-ID"] = f"<{header_text(key, 200).replace(' ', '')}@wildwatch>"
        lines = [f"{k}: {v}" for k, v in alert.to_json().items() if v not in (None, "") and not k.endswith("_base64")]
        m.set_content("A sighting that the alert policy asks to report.\n\n" + "\n".join(lines) + "\n")
        if snapshot:
            m.add_attachment(snapshot, maintype="image", subtype="jpeg", filename=f"sighting-{alert.sighting_id}.jpg")
        return m

    def send(self, alert: Alert, key: str, snapshot: bytes | None) -> None:
        msg = self.message(alert, key, snapshot)
        try:
            smtp: smtplib.SMTP
            if self.cfg.ssl:
                smtp = smtplib.SMTP_SSL(self.cfg.host, self.cfg.port, timeout=self.cfg.timeout_s,
                                        context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(self.cfg.host, self.cfg.port, timeout=self.cfg.timeout_s)
            with smtp:
                if self.cfg.starttls and not self.cfg.ssl:
                    smtp.starttls(context=ssl.create_default_context())
                if self.user:
                    smtp.login(self.user, self.password or "")
                smtp.send_message(msg)
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(f"{self.cfg.host}: SMTP {exc.smtp_code} {exc.smtp_error!r}",
                                retry=exc.smtp_code >= 400 and exc.smtp_code < 500) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{self.cfg.host}:{self.cfg.port}: {exc}") from exc


def header_text(value: str, limit: int = 300) -> str:
    """``value`` fit for an email header: control characters (CR, LF, tabs ...) become spaces, runs
    of spaces one, and at most ``limit`` characters."""
    cleaned = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in str(value))
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= limit else cleaned[:limit - 1] + "…"


def _sink(c: SinkConfig, echo: Callable[[str], None] | None) -> Sink:
    if isinstance(c, ConsoleSinkConfig):
        return ConsoleSink(c, echo)
    if isinstance(c, WebhookSinkConfig):
        return WebhookSink(c)
    return EmailSink(c)


def make_sinks(configs: Sequence[SinkConfig], echo: Callable[[str], None] | None = None) -> dict[str, Sink]:
    sinks: dict[str, Sink] = {}
    for i, c in enumerate(configs):
        name = c.name or f"{c.type}{i}"
        if name in sinks:
            raise UsageError(f"two sinks are named {name!r}; give them different names")
        sinks[name] = _sink(c, echo)
    return sinks


# ---------------------------------------------------------------- outbox


@dataclass
class Outbox:
    """Queued alerts in the events database (``store.outbox``), and their delivery with retries and
    backoff."""

    store: EventStore
    sinks: dict[str, Sink]
    base_backoff_s: float = 1.0
    max_backoff_s: float = 300.0
    stats: dict = field(default_factory=lambda: {"sent": 0, "failed": 0, "retries": 0})
    _stats_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.table = OutboxTable(self.store)

    def _count(self, what: str) -> None:
        with self._stats_lock:  # one delivery thread per sink
            self.stats[what] += 1

    def enqueue(self, sighting_id: int, alert: Alert, priority: int, not_before: float, tag: str | None = None,
                content: str | None = None) -> None:
        """Inside the store's transaction that wrote the sighting (or the case). ``content`` says what
        the alert is about (source, item, species, time): the idempotency key is derived from it, so
        the same sighting gets the same key even in a new database (a receiver de-duplicates it).
        Without it, ``tag`` (or the sighting's id) and the database's instance name the alert."""
        for name in self.sinks:
            if content is not None:
                key = f"ww-{hashlib.sha256(content.encode()).hexdigest()[:24]}-{name}"
            else:
                key = f"ww-{self.store.instance[:12]}-{tag or sighting_id}-{name}"
            payload = json.dumps(alert.model_copy(update={"idempotency_key": key}).to_json())
            self.table.add(sighting_id, name, key, payload, priority, not_before)

    def counts(self) -> dict:
        return self.table.counts()

    def next_due_in(self, sink: str | None = None) -> float | None:
        return self.table.next_due_in(sink)

    def deliver_due(self, now: float | None = None, limit: int = 50, sink: str | None = None) -> int:
        """Send what is due now (to one sink, or to all); returns how many were delivered."""
        sent = 0
        for row in self.table.due(time.time() if now is None else now, limit, sink):
            target = self.sinks.get(row.sink)
            if target is None:  # a sink removed from the configuration: keep the row for when it returns
                continue
            sent += self._deliver(row, target)
        return sent

    def _deliver(self, row: QueuedAlert, sink: Sink) -> bool:
        alert = alert_from_json(json.loads(row.payload))
        snapshot = None
        if sink.wants_snapshot:
            snapshot = (case_thumbnail(self.store, alert.case_id) if isinstance(alert, CaseAlert) and alert.case_id
                        else self.store.snapshot(row.sighting_id))
        try:
            sink.send(alert, row.key, snapshot)
        except Exception as exc:  # noqa: BLE001 - whatever a sink raises, the alert backs off and is kept
            self._failed(row, exc if isinstance(exc, DeliveryError) else DeliveryError(f"{type(exc).__name__}: {exc}"))
            return False
        self.table.delivered(row.id, row.attempts + 1)
        self._count("sent")
        return True

    def _failed(self, row: QueuedAlert, exc: DeliveryError) -> None:
        attempts = row.attempts + 1
        if exc.retry:
            wait = min(self.max_backoff_s, self.base_backoff_s * 2 ** (attempts - 1))
            self.table.retry_at(row.id, attempts, time.time() + wait, str(exc))
            self._count("retries")
            log.warning("alert %s to %s failed (%s); retry in %.1f s", row.key, row.sink, exc, wait)
        else:
            self.table.failed(row.id, attempts, str(exc))
            self._count("failed")
            log.error("alert %s to %s refused (%s); kept in the outbox as failed", row.key, row.sink, exc)

    def run(self, stop: threading.Event, wake: threading.Event, poll_s: float = 1.0) -> None:
        """The delivery loop: one worker thread per sink, so a receiver that hangs or answers slowly
        holds back only its own alerts. ``wake`` (new alerts) wakes every worker."""
        events = {name: threading.Event() for name in self.sinks}
        workers = [threading.Thread(target=self._run_sink, args=(name, stop, events[name], poll_s), daemon=True,
                                    name=f"alerts to {name}") for name in self.sinks]
        for w in workers:
            w.start()
        while not stop.is_set():
            if wake.wait(poll_s):
                wake.clear()
                for e in events.values():
                    e.set()
        for e in events.values():
            e.set()
        for w in workers:  # a worker inside a send finishes it (each sink has its own timeout)
            w.join(timeout=2)

    def _run_sink(self, name: str, stop: threading.Event, wake: threading.Event, poll_s: float) -> None:
        while not stop.is_set():
            try:
                self.deliver_due(sink=name)
            except Exception:
                log.exception("alert delivery to %s: loop error", name)
            due = self.next_due_in(name)
            wake.wait(poll_s if due is None else min(poll_s, max(due, 0.01)))
            wake.clear()
