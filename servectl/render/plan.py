"""Turn plans and state into text for people. Reads data; decides nothing."""
from __future__ import annotations

import json
from typing import Any, Optional

from rich.console import Console
from rich.markup import escape
from rich.color import ColorSystem
from rich.style import Style
from rich.text import Text

from servectl.model.plan import Action, Plan, ResourceChange
from servectl.planning.planner import flatten
from servectl.sensitive import REDACTED, redact
from servectl.state.document import APPLYING, FAILED, StateDocument

SYMBOLS = {
    Action.CREATE: ("+", "green"),
    Action.UPDATE: ("~", "yellow"),
    Action.REPLACE: ("-/+", "magenta"),
    Action.DELETE: ("-", "red"),
    Action.NOOP: (" ", "dim"),
}
HEADLINES = {
    Action.CREATE: "will be created",
    Action.UPDATE: "will be updated in place",
    Action.REPLACE: "must be replaced (replicas restart, rolling)",
    Action.DELETE: "will be destroyed",
}


def value(v: Any) -> str:
    """One value as plan or state text: a sensitive one as ``(sensitive)``, str, dict and list as JSON, None as null."""
    v = redact(v)
    if v == REDACTED:
        return REDACTED
    if isinstance(v, str):
        return json.dumps(v)
    if v is None:
        return "null"
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


def change_text(change: ResourceChange, text: Optional[Text] = None) -> Text:
    """One change as styled text (appended to ``text`` when given): headline, attribute diff, reasons.

    Built as one ``Text`` without markup parsing, so a plan of 10,000 changes
    is one print, not 70,000 (that was most of a large plan's time).
    """
    text = text if text is not None else Text()
    symbol, color = SYMBOLS[change.action]
    text.append("  ")
    text.append(f"# {change.address}", style="bold")
    text.append(f" {HEADLINES[change.action]}\n  ")
    text.append(symbol, style=color)
    text.append(f" {change.kind} {value(change.name)} {{\n")
    if change.action is Action.CREATE:
        for path, v in flatten(change.after or {}).items():
            text.append("      ")
            text.append("+", style="green")
            text.append(f" {path} = {value(v)}\n")
    elif change.action is Action.DELETE:
        for path, v in flatten(change.before or {}).items():
            text.append("      ")
            text.append("-", style="red")
            text.append(f" {path} = {value(v)}\n")
    else:
        for diff in change.diffs:
            text.append("      ")
            text.append("~", style="yellow")
            text.append(f" {diff.path} = {value(diff.before)} → {value(diff.after)}")
            if diff.forces_replacement:
                text.append("  # forces replacement", style="magenta")
            text.append("\n")
    text.append("    }\n")
    if change.action in (Action.UPDATE, Action.REPLACE) and change.reasons:
        text.append(f"    because: {'; '.join(change.reasons)}\n", style="dim")
    text.append("\n")
    return text


COLOR_SYSTEMS = {"standard": ColorSystem.STANDARD, "256": ColorSystem.EIGHT_BIT, "truecolor": ColorSystem.TRUECOLOR,
                 "windows": ColorSystem.WINDOWS}


def write_text(console: Console, text: Text) -> None:
    """Write a large styled ``Text`` (non-overlapping spans, no wrapping) straight to the console's file.

    Rich lays a Text out segment by segment, which took most of a 10,000-change
    plan's time; here each span is styled once with rich's own ``Style``, or
    left plain when the console has no colour (a pipe, a file, NO_COLOR).
    """
    plain = text.plain
    system = COLOR_SYSTEMS.get(console.color_system or "") if not console.no_color else None
    if system is None:
        console.file.write(plain)
        console.file.flush()
        return
    parts, cursor = [], 0
    for span in sorted(text.spans, key=lambda s: s.start):
        if span.start > cursor:
            parts.append(plain[cursor:span.start])
        style = span.style if isinstance(span.style, Style) else Style.parse(str(span.style))
        parts.append(style.render(plain[span.start:span.end], color_system=system))
        cursor = max(cursor, span.end)
    parts.append(plain[cursor:])
    console.file.write("".join(parts))
    console.file.flush()


def render_change(console: Console, change: ResourceChange) -> None:
    """Print one change (see ``change_text``)."""
    write_text(console, change_text(change))


TRAFFIC_MOVES_SHOWN = 10  # the summary is one line: each change above shows its own traffic


def summary_line(plan: Plan) -> str:
    """The plan's one-line summary, Terraform's ``Plan: N to add, …`` extended.

    Adds the replica and GPU-node deltas, the placement (or, where the provider has node groups, their sizes and
    hourly cost) and up to TRAFFIC_MOVES_SHOWN endpoints whose traffic moves.
    """
    p = plan.placement
    before = plan.placement_before
    delta = plan.replica_delta
    gpu_delta = p["gpu_nodes_used"] - before.get("gpu_nodes_used", 0)
    parts = [
        f"Plan: {plan.count(Action.CREATE)} to add, {plan.count(Action.UPDATE)} to change, "
        f"{plan.count(Action.REPLACE)} to replace, {plan.count(Action.DELETE)} to destroy",
        f"replicas {delta:+d} ({plan.replicas_before} → {plan.replicas_after}"
        + (f", up to {plan.replicas_max_after} by autoscaling" if (plan.replicas_max_after or 0) > plan.replicas_after else "")
        + ")",
        f"GPU nodes {gpu_delta:+d}",
    ]
    if "node_groups" in p or "node_groups" in before:
        parts += fleet_parts(p, before)
    else:
        parts.append(
            f"placement: {p['replicas']} replicas on {p['nodes_used']} of {p['nodes_total']} node"
            f"{'s' if p['nodes_total'] != 1 else ''}, CPU {p['cpus_used']:g}/{p['cpus_total']:g}, "
            f"GPU {p['gpus_used']:g}/{p['gpus_total']}"
            + (" (cluster not started yet: shape from LocalRay settings)" if plan.cluster_source == "projected" else "")
        )
    traffic = traffic_moves(plan)
    if traffic:
        shown = traffic[:TRAFFIC_MOVES_SHOWN]
        more = f" (and {len(traffic) - len(shown)} more)" if len(traffic) > len(shown) else ""
        parts.append("traffic: " + ", ".join(shown) + more)
    return "; ".join(parts)


def fleet_parts(after: dict, before: dict) -> list[str]:
    """``nodes: cpu 1, gpu 1 → 3 (autoscaling 0–8)``, ``cost $3.21/h (+$2.01/h)``: node groups in one breath."""
    groups_after = after.get("node_groups") or {}
    groups_before = before.get("node_groups") or {}
    sizes = []
    for name in sorted(set(groups_after) | set(groups_before)):
        old = (groups_before.get(name) or {}).get("desired_capacity", 0)
        group = groups_after.get(name) or {}
        new = group.get("desired_capacity", 0)
        text = f"{name} {old} → {new}" if old != new else f"{name} {new}"
        if group and (group.get("min_size"), group.get("max_size")) != (new, new):
            text += f" (autoscaling {group.get('min_size')}–{group.get('max_size')})"
        sizes.append(text)
    parts = [f"nodes: {', '.join(sizes)}"] if sizes else []
    cost_after, cost_before = after.get("hourly_cost"), before.get("hourly_cost") or 0.0
    if cost_after is not None:
        delta = cost_after - cost_before
        parts.append(f"cost ${cost_after:,.2f}/h ({'+' if delta >= 0 else '-'}${abs(delta):,.2f}/h)")
    return parts


def gpu_sharing(plan: Plan) -> list[str]:
    """One line per GPU that holds replicas, naming who shares it: fractional packing made visible."""
    lines = []
    for node in plan.placement.get("nodes", []):
        for index, shares in enumerate(node.get("gpu_shares") or []):
            if shares:
                used = sum(shares.values())
                held = " + ".join(f"{backend} {share:g}" for backend, share in shares.items())
                lines.append(f"{node['node']} GPU {index}: {held} ({used:g} of 1 used)")
    return lines


def _weights(name: str, weights: dict[str, float]) -> str:
    if len(weights) > 1:
        return f"{name} " + "/".join(f"{w:g}" for w in weights.values()) + " (" + "/".join(weights) + ")"
    return f"{name} → {next(iter(weights))}"


def traffic_moves(plan: Plan) -> list[str]:
    """One text per endpoint whose weights the plan changes: ``NAME 0.9/0.1 (a/b)``, or ``NAME → a`` (one backend);
    and one per model id routed apart whose weights change: ``NAME model m-7 0.5/0.5 (a/b)``."""
    moves = []
    for change in plan.actionable:
        if change.kind != "endpoint" or change.after is None:
            continue
        before = change.before or {}
        if change.before is None or before.get("traffic") != change.after.get("traffic"):
            moves.append(_weights(change.name, change.after["traffic"]))
        was, now = before.get("models") or {}, change.after.get("models") or {}
        moves += [_weights(f"{change.name} model {model}", routed) for model, routed in now.items() if was.get(model) != routed]
    return moves


def bundle_line(plan: Plan) -> str:
    """``Code shipped: 4 files; left out: secrets.env (.servectlignore), prod.tfplan (a saved plan)``, when anything of
    the user's is left out; empty otherwise."""
    ignored = plan.bundle.get("ignored") or []
    plans = plan.bundle.get("saved_plans") or []
    own = plan.bundle.get("servectl_files") or []
    if not ignored and not plans and not own:
        return ""
    left = ([f"{path} (.servectlignore)" for path in ignored] + [f"{path} (a saved plan)" for path in plans]
            + [f"{path} (servectl's: a state or holds sensitive values)" for path in own])
    return f"Code shipped: {plan.bundle.get('files', 0)} files; left out: {', '.join(left)}"


def render_plan(console: Console, plan: Plan) -> None:
    """Print the plan for people, as ``terraform plan`` does: each change, the summary, what code ships, GPU sharing.

    A plan without changes prints ``No changes.``, the summary line and what code ships.
    """
    if not plan.has_changes():
        console.print("[green]No changes.[/green] " + (
            "No objects need to be destroyed: the state holds none." if plan.destroy
            else "The recorded state matches the config."))
        console.print(summary_line(plan))
        if bundle_line(plan):
            console.print(escape(bundle_line(plan)))
        return
    text = Text("servectl will perform the following actions:\n\n")
    for change in plan.actionable:
        change_text(change, text)
    text.append(summary_line(plan), style="bold")
    text.append("\n")
    write_text(console, text)
    shipped = bundle_line(plan)
    if shipped:
        console.print(escape(shipped))
    sharing = gpu_sharing(plan)
    if sharing:
        console.print("GPUs after apply:")
        for line in sharing:
            console.print(f"  {escape(line)}")


def render_drift(console: Console, items: list, refreshing: bool) -> None:
    """Drift items (servectl.engine.drift.DriftItem); ``refreshing``: say what apply --refresh-only would do."""
    if not items:
        console.print("[green]No drift.[/green] The live system matches the state.")
        return
    console.print("[bold]Drift:[/bold] objects changed outside servectl:")
    for item in items:
        console.print(f"  [yellow]~[/yellow] {escape(item.describe())}")
    if refreshing:
        console.print(
            "\n`servectl apply --refresh-only` records these live values in the state (nothing live changes); "
            "the next plan then shows how the config differs from them."
        )


def render_state(console: Console, document: Optional[StateDocument], address: Optional[str] = None) -> None:
    """Print the state's resources for ``servectl state show`` (only ``address`` when given).

    Each shows its attributes, then its ``live.`` values dimmed, and whether its last change failed or was interrupted;
    the full listing ends with the state's serial, lineage and update time.
    """
    if document is None or not document.resources:
        console.print("The state is empty: nothing has been applied.")
        return
    for addr, resource in sorted(document.resources.items()):
        if address is not None and addr != address:
            continue
        status = f"  [red](failed: {escape(resource.error or '')})[/red]" if resource.status == FAILED else ""
        if resource.status == APPLYING:
            status = "  [red](interrupted: the last apply stopped during this change)[/red]"
        console.print(f"[bold]# {addr}[/bold]{status}")
        console.print(f"{resource.kind} {value(resource.name)} {{")
        for path, v in flatten(resource.attributes).items():
            console.print(f"    {path} = {escape(value(v))}")
        for path, v in flatten(resource.live).items():
            console.print(f"    [dim]live.{path} = {escape(value(v))}[/dim]")
        console.print("}\n")
    if address is None:
        console.print(f"[dim]serial {document.serial}, lineage {document.lineage}, updated {document.updated_at}[/dim]")
