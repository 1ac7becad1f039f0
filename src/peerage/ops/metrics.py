"""Prometheus metrics and the health check, on their own listener (`[metrics] listen`).

This module is in charge of the process's metrics registry and of filling it without the protocol
code knowing about it where that is possible:
- connections accepted and open, per listener (peerage.net.listen counts them);
- authentication successes and failures (the shared throttle every protocol reports to);
- XMPP stanzas routed, by kind (the stanza router's counts), SIP transactions (the transaction layer);
- the outbound mail queue and s2s queues (read at scrape time), mail deliveries by outcome;
- database statement latency (SQLAlchemy events).
`/metrics` is the Prometheus text format; `/health` answers 200 with JSON when the database answers,
503 otherwise. Everything is plain HTTP: keep the listener on a private address.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)
from prometheus_client.core import CounterMetricFamily

log = logging.getLogger("peerage.ops")

REGISTRY = CollectorRegistry()
process_collector.ProcessCollector(registry=REGISTRY)
platform_collector.PlatformCollector(registry=REGISTRY)
gc_collector.GCCollector(registry=REGISTRY)

CONNECTIONS = Counter("peerage_connections", "Connections accepted, per listener", ["listener"], registry=REGISTRY)
CONNECTIONS_OPEN = Gauge("peerage_connections_open", "Connections open now, per listener", ["listener"],
                         registry=REGISTRY)
LOGINS = Counter("peerage_logins", "Authentication attempts by result (success, failure)", ["result"],
                 registry=REGISTRY)

class _StanzaCounts:
    """``peerage_xmpp_stanzas_total{kind}``: XMPP stanzas routed, by kind, read at scrape time.

    The stanza router counts them itself (``StanzaRouter.routed``): an event handler with a
    prometheus_client ``Counter.inc`` on every stanza cost about a tenth of the whole in-process
    route of a chat message (bench/xmpp_c2s/route_micro.py).
    """

    def __init__(self) -> None:
        self.sources: list[dict[str, int]] = []

    def collect(self) -> Any:
        family = CounterMetricFamily("peerage_xmpp_stanzas", "XMPP stanzas routed, by kind", labels=["kind"])
        for kind in ("message", "presence", "iq"):
            family.add_metric([kind], sum(source.get(kind, 0) for source in self.sources))
        yield family


STANZAS = _StanzaCounts()
REGISTRY.register(STANZAS)
SIP_TRANSACTIONS = Counter("peerage_sip_transactions", "SIP transactions started, by side (client, server)",
                           ["side"], registry=REGISTRY)
SIP_ACTIVE = Gauge("peerage_sip_transactions_active", "SIP transactions alive now", registry=REGISTRY)
MAIL_QUEUE = Gauge("peerage_mail_queue_entries", "Outbound mail queue rows (one per recipient)",
                   registry=REGISTRY)
S2S_QUEUE = Gauge("peerage_xmpp_s2s_queued_stanzas", "Stanzas waiting for an s2s connection", registry=REGISTRY)
DELIVERIES = Counter("peerage_mail_deliveries", "Outbound mail delivery attempts by outcome", ["outcome"],
                     registry=REGISTRY)
DB_SECONDS = Histogram("peerage_database_statement_seconds", "Database statement latency", registry=REGISTRY,
                       buckets=(1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0))
UP = Gauge("peerage_up", "1 while the server runs", registry=REGISTRY)


def delivery(outcome: str) -> None:
    """Count one delivery attempt's outcome (delivered, temporary, permanent)."""
    DELIVERIES.labels(outcome).inc()


def instrument_host(host: Any) -> None:
    """Count logins through the shared throttle and time database statements."""
    throttle = getattr(getattr(host, "limits", None), "auth", None)
    if throttle is not None:
        failure, success = throttle.failure, throttle.success

        def counted_failure(*args: Any, **kwargs: Any) -> Any:
            LOGINS.labels("failure").inc()
            return failure(*args, **kwargs)

        def counted_success(*args: Any, **kwargs: Any) -> Any:
            LOGINS.labels("success").inc()
            return success(*args, **kwargs)

        throttle.failure, throttle.success = counted_failure, counted_success
    from sqlalchemy import event

    engine = host.store.engine.sync_engine

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: Any) -> None:
        conn.info.setdefault("peerage_started", []).append(time.perf_counter())

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: Any) -> None:
        started = conn.info.get("peerage_started")
        if started:
            DB_SECONDS.observe(time.perf_counter() - started.pop())


def instrument_services(services: list[Any]) -> None:
    """Hook the XMPP stanza events and the SIP transaction layer of the running services."""
    for service in services:
        try:
            _count_stanzas(service)
            layer = getattr(service, "layer", None)
            if layer is not None and hasattr(layer, "new_client"):
                _count_transactions(layer)
        except (AttributeError, TypeError) as exc:  # metrics never stop a service from running
            log.warning("metrics: cannot observe %s: %s", type(service).__name__, exc)


def _count_stanzas(service: Any) -> None:
    """Read the stanza router's own counts (``StanzaRouter.routed``) at scrape time."""
    routed = getattr(getattr(service, "stanzas", None), "routed", None)
    if isinstance(routed, dict) and not any(source is routed for source in STANZAS.sources):
        STANZAS.sources.append(routed)


def _count_transactions(layer: Any) -> None:
    new_client, receive_request = layer.new_client, layer.receive_request
    client, server = SIP_TRANSACTIONS.labels("client"), SIP_TRANSACTIONS.labels("server")

    def counted_client(*args: Any, **kwargs: Any) -> Any:
        client.inc()
        return new_client(*args, **kwargs)

    def alive() -> int:
        count = getattr(layer, "count", 0)
        return int(count() if callable(count) else count)

    def counted_request(*args: Any, **kwargs: Any) -> Any:
        result = receive_request(*args, **kwargs)
        # (transaction, is_new): a new server transaction, counted without sizing the tables twice
        # per request (this runs for every SIP request)
        if result[1] and result[0] is not None:
            server.inc()
        return result

    layer.new_client, layer.receive_request = counted_client, counted_request
    SIP_ACTIVE.set_function(lambda: float(alive()))


async def _refresh(host: Any) -> None:
    """Values read at scrape time: queue sizes."""
    try:
        from sqlalchemy import func, select

        from peerage.mail.queue_tables import mail_queue

        async with host.store.begin() as conn:
            MAIL_QUEUE.set((await conn.execute(select(func.count()).select_from(mail_queue))).scalar() or 0)
    except ImportError:
        pass
    queued = 0
    for service in host.services:
        s2s = getattr(service, "s2s", None)
        for route in getattr(s2s, "routes", {}).values():
            queued += len(getattr(route, "queue", ()))
    S2S_QUEUE.set(queued)


class MetricsServer:
    """The `[metrics] listen` HTTP listener: GET /metrics and GET /health."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.runner: Any = None

    async def start(self) -> None:
        from aiohttp import web

        from peerage.net.listen import start_listeners

        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        factory = self.runner.server
        self.servers = await start_listeners("metrics", "[metrics] listen", self.host.config.metrics.listen,
                                             protocol_factory=factory)
        UP.set(1)

    async def metrics(self, request: Any) -> Any:
        from aiohttp import web

        try:
            await _refresh(self.host)
        except Exception:
            log.exception("could not read queue sizes for /metrics")
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(self, request: Any) -> Any:
        from aiohttp import web
        from sqlalchemy import text

        checks: dict[str, Any] = {"services": [type(s).__name__ for s in self.host.services]}
        try:
            async with self.host.store.begin() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
            status = 200
        except Exception as exc:
            checks["database"] = f"failed: {exc}"
            status = 503
        checks["status"] = "ok" if status == 200 else "failing"
        return web.Response(status=status, text=json.dumps(checks), content_type="application/json")

    async def stop(self) -> None:
        UP.set(0)
        for server in getattr(self, "servers", []):
            server.close()
        if self.runner is not None:
            await self.runner.cleanup()
