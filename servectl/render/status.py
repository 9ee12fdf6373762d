"""`servectl status` as tables for people. Reads a StatusReport; decides nothing."""
from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from servectl.engine.status import StatusReport, Traffic

HEALTHY = ("HEALTHY", "RUNNING")


def _number(value: Optional[float], digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _errors(traffic: Traffic) -> str:
    return "—" if traffic.error_ratio is None else f"{traffic.error_ratio * 100:.1f}%"


def _latency(traffic: Traffic, value: Optional[float]) -> str:
    text = _number(value)
    return text + "*" if value is not None and traffic.latency_scope == "lifetime" else text


def _share(weights: dict[str, float]) -> str:
    return " / ".join(f"{name} {weight:g}" for name, weight in weights.items()) or "—"


def render_status(console: Console, report: StatusReport) -> None:
    """Print ``servectl status``: an Endpoints table and a Backends table, then what needs a word.

    Endpoints show route, weights, shadow, req/s, error % and p50/p99 ms; backends running/target replicas (yellow
    when out of range), health and the same rates. Then each backend's last error line, the metrics window, each
    endpoint's rollout and the nodes whose metrics were not read. ``*`` marks a latency since the replicas started.
    """
    endpoints = Table(title="Endpoints", title_justify="left")
    for column in ("endpoint", "route", "traffic", "shadow", "req/s", "errors", "p50 ms", "p99 ms"):
        endpoints.add_column(column, justify="right" if column in ("req/s", "errors", "p50 ms", "p99 ms") else "left")
    for e in report.endpoints:
        endpoints.add_row(
            e.name, e.route or "(handles only)", _share(e.weights), _share(e.shadow),
            _number(e.traffic.requests_per_s), _errors(e.traffic),
            _latency(e.traffic, e.traffic.p50_ms), _latency(e.traffic, e.traffic.p99_ms),
        )
    backends = Table(title="Backends", title_justify="left")
    for column in ("backend", "replicas", "health", "req/s", "errors", "p50 ms", "p99 ms"):
        backends.add_column(column, justify="left" if column in ("backend", "health") else "right")
    for b in report.backends:
        health = b.health if b.health in HEALTHY else f"[red]{b.health}[/red]"
        autoscaled = b.target_max is not None and b.target_max != b.target
        replicas = f"{b.running}/{b.target}–{b.target_max}" if autoscaled else f"{b.running}/{b.target}"
        if not (b.target <= b.running <= (b.target_max if autoscaled else b.target)):
            replicas = f"[yellow]{replicas}[/yellow]"
        backends.add_row(
            b.name, replicas, health, _number(b.traffic.requests_per_s), _errors(b.traffic),
            _latency(b.traffic, b.traffic.p50_ms), _latency(b.traffic, b.traffic.p99_ms),
        )
    console.print(endpoints)
    console.print(backends)
    for b in report.backends:
        if b.message:
            console.print(f"[red]{escape(b.name)}[/red]: {escape(b.message.splitlines()[-1][:300])}")
    if report.window_s > 0:
        note = f"Rates and errors over the last {report.window_s:g} s"
    else:
        note = "No window measured (--window 0): errors are since the replicas started"
    console.print(f"[dim]{note}; * latency since the replicas started (no requests in the window); "
                  f"metrics from {report.nodes_scraped} node(s).[/dim]")
    for e in report.endpoints:
        if e.rollout:
            r = e.rollout
            reason = f": {r['reason']}" if r.get("reason") else ""
            console.print(escape(f"rollout {e.name}: {r['stable']} → {r['new']} {r['status']} at "
                                 f"{float(r['weight']):.1%}{reason}"))
    for problem in report.scrape_errors:
        console.print(f"[yellow]metrics not read from {escape(problem)}[/yellow]")
