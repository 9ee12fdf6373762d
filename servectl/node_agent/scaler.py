"""Node groups follow demand between their min and max sizes: the head's agent sizes them from Serve's replica targets.

Why not an Auto Scaling policy: a target-tracking or step policy sees metrics
of the nodes that run (CPU, request counts). It cannot see a replica waiting
for a GPU no node has, nor tell which group such a replica needs, and on
scale-in the group picks which instance goes — maybe one holding replicas.
Ray's own autoscaler knows the demand but launches bare instances, not
members of servectl's groups. So the head's node agent does what Ray's
autoscaler does, with the plan's own packing (``servectl.planning.fleet``): every
``interval`` it packs every deployment's *target* replicas (Serve's
autoscaler moves those targets) onto the node types; a group that needs more
nodes gets its desired capacity raised (never past max_size); a group with
more than it needs loses only nodes that have held no replica for
``idle_s``, each terminated by instance id with the desired capacity
decremented (never below min_size).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from servectl.planning.fleet import NodeShape, pack_fleet
from servectl.planning.placement import ReplicaDemand

IDLE_S = 300.0


@dataclass(frozen=True)
class Group:
    """A node group as the routing document carries it: its Auto Scaling group and what one node offers."""

    label: str
    asg_name: str
    resources: dict[str, float]
    min_size: int
    max_size: int

    @classmethod
    def from_document(cls, label: str, entry: dict[str, Any]) -> "Group":
        """A group from its entry in the routing document's ``node_groups``.

        The entry needs ``asg_name``, ``resources`` (one node's, as Ray names them), ``min_size`` and ``max_size``;
        KeyError when one is missing.
        """
        return cls(label, str(entry["asg_name"]), dict(entry["resources"]), int(entry["min_size"]), int(entry["max_size"]))

    def shape(self) -> NodeShape:
        """One node of the group as the packer sees it: CPU, GPU and custom resources, min/max size as node limits."""
        custom = {k: float(v) for k, v in self.resources.items() if k not in ("CPU", "GPU")}
        return NodeShape(name=self.label, cpus=float(self.resources.get("CPU", 0)), gpus=int(self.resources.get("GPU", 0)),
                         resources=custom, min_nodes=self.min_size, max_nodes=self.max_size)


@dataclass(frozen=True)
class Member:
    """One running instance of a group, as Ray sees it (by IP) and how many replicas it holds."""

    group: str
    instance_id: str
    ip: str
    replicas: int


def demand(details: dict[str, Any]) -> list[tuple[ReplicaDemand, int]]:
    """Every deployment's target replica count with the resources one replica needs (Serve's details)."""
    wanted = []
    for app in (details.get("applications") or {}).values():
        for name, deployment in (app.get("deployments") or {}).items():
            target = int(deployment.get("target_num_replicas") or 0)
            needs = dict(deployment.get("required_resources") or {})
            if target <= 0:
                continue
            options = {"num_cpus": needs.pop("CPU", 0.0), "num_gpus": needs.pop("GPU", 0.0),
                       "memory": needs.pop("memory", None), "resources": needs}
            wanted.append((ReplicaDemand.from_actor_options(name, options), target))
    return wanted


def replicas_by_ip(details: dict[str, Any]) -> dict[str, int]:
    """Replicas per node IP, counted from each replica's ``node_ip`` in Serve's details."""
    counts: dict[str, int] = {}
    for app in (details.get("applications") or {}).values():
        for deployment in (app.get("deployments") or {}).values():
            for replica in deployment.get("replicas") or []:
                ip = replica.get("node_ip")
                if ip:
                    counts[str(ip)] = counts.get(str(ip), 0) + 1
    return counts


@dataclass
class Decision:
    """What one sizing round does: groups whose desired capacity rises, and idle instances to terminate."""

    raise_to: dict[str, int] = field(default_factory=dict)  # group -> new desired capacity
    terminate: list[Member] = field(default_factory=list)  # idle nodes to remove (desired decremented)


@dataclass
class NodeScaler:
    """The sizing rules, with the memory they need: since when each node has been idle."""

    idle_s: float = IDLE_S
    idle_since: dict[str, float] = field(default_factory=dict)  # instance id -> first seen without replicas

    def decide(
        self, groups: list[Group], desired: dict[str, int], members: list[Member], details: dict[str, Any],
        now: Optional[float] = None,
    ) -> Decision:
        """One sizing round, the job Ray's autoscaler does (with an idle timeout like its ``idle_timeout_minutes``).

        Packs every deployment's target replicas onto the groups' shapes. A group short of nodes is raised to what it
        needs, within its min and max size; a group with more than it needs gives up members that have held no replica
        for ``idle_s`` seconds, longest idle first, never below what it needs or its min_size. ``desired`` is each
        group's current desired capacity; ``now`` is seconds on the monotonic clock. Updates ``idle_since``.
        """
        now = time.monotonic() if now is None else now
        needed = pack_fleet(demand(details), [g.shape() for g in groups]).nodes
        decision = Decision()
        live_ids = {m.instance_id for m in members}
        self.idle_since = {i: t for i, t in self.idle_since.items() if i in live_ids}
        for member in members:
            if member.replicas:
                self.idle_since.pop(member.instance_id, None)
            else:
                self.idle_since.setdefault(member.instance_id, now)
        for group in groups:
            want = min(group.max_size, max(group.min_size, needed.get(group.label, 0)))
            have = desired.get(group.label, 0)
            if want > have:
                decision.raise_to[group.label] = want
                continue
            spare = have - max(want, group.min_size)
            idle = sorted(
                (m for m in members if m.group == group.label and not m.replicas
                 and now - self.idle_since.get(m.instance_id, now) >= self.idle_s),
                key=lambda m: (self.idle_since[m.instance_id], m.instance_id),
            )
            decision.terminate.extend(idle[:max(0, spare)])
        return decision


def members(autoscaling: Any, ec2: Any, groups: list[Group], replicas: dict[str, int]) -> tuple[dict[str, int], list[Member]]:
    """Each group's desired capacity and its in-service instances with their IPs and replica counts."""
    by_name = {g.asg_name: g.label for g in groups}
    found = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=list(by_name))["AutoScalingGroups"]
    desired = {by_name[g["AutoScalingGroupName"]]: int(g["DesiredCapacity"]) for g in found}
    instance_group = {
        i["InstanceId"]: by_name[g["AutoScalingGroupName"]]
        for g in found for i in g.get("Instances", []) if i.get("LifecycleState") == "InService"
    }
    out: list[Member] = []
    if instance_group:
        reservations = ec2.describe_instances(InstanceIds=sorted(instance_group))["Reservations"]
        for reservation in reservations:
            for instance in reservation["Instances"]:
                ip = str(instance.get("PrivateIpAddress") or "")
                out.append(Member(instance_group[instance["InstanceId"]], instance["InstanceId"], ip, replicas.get(ip, 0)))
    return desired, sorted(out, key=lambda m: m.instance_id)


def carry_out(autoscaling: Any, groups: list[Group], decision: Decision) -> list[str]:
    """Make the decision real; returns what was done, for the agent's log."""
    names = {g.label: g.asg_name for g in groups}
    done = []
    for label, size in sorted(decision.raise_to.items()):
        autoscaling.set_desired_capacity(AutoScalingGroupName=names[label], DesiredCapacity=size, HonorCooldown=False)
        done.append(f"node_group.{label}: desired → {size}")
    for member in decision.terminate:
        autoscaling.terminate_instance_in_auto_scaling_group(InstanceId=member.instance_id,
                                                             ShouldDecrementDesiredCapacity=True)
        done.append(f"node_group.{member.group}: terminated idle {member.instance_id} ({member.ip})")
    return done


@dataclass
class HeadScaling:
    """The scaler as the head's agent runs it: every ``interval_s``, read Serve, size the groups, act."""

    scaler: NodeScaler
    autoscaling: Any  # boto3 clients
    ec2: Any
    details: Callable[[], dict[str, Any]]  # Serve's details from the head's dashboard
    interval_s: float = 30.0
    last: float = float("-inf")

    def maybe_run(self, document: dict[str, Any]) -> list[str]:
        """Run one sizing round if ``interval_s`` seconds have passed since the last, on AWS.

        ``document`` is the applied routing document (its ``node_groups``). Returns the log lines of what was done,
        empty when it did not run or there are no groups; errors from boto3 and the dashboard propagate.
        """
        now = time.monotonic()
        if now - self.last < self.interval_s:
            return []
        self.last = now
        groups = [Group.from_document(label, entry) for label, entry in sorted((document.get("node_groups") or {}).items())]
        if not groups:
            return []
        details = self.details()
        sizes, running = members(self.autoscaling, self.ec2, groups, replicas_by_ip(details))
        return carry_out(self.autoscaling, groups, self.scaler.decide(groups, sizes, running, details, now))
