"""Which PropertiesChanged match rules follow the wanted paths of one service.

dbus-daemon caps the match rules of one connection (max_match_rules_per_connection,
512 in its stock config); one rule per wanted path costs a serialbattery pack ~51, so 16 packs
overflow. A rule may instead name a sub-tree, `path_namespace='/System'` (dbus-daemon >= 1.5), which
also admits the sub-tree's unwanted paths. `plan_rules` decides, per service:

- Candidates are the proper ancestors of a wanted path except `/` ('/Dc' and '/Dc/0' for
  '/Dc/0/Voltage'); `/` would be the sender-wide rule.
- A candidate N qualifies when it holds >= 3 wanted paths and the service's paths in N (those its
  GetItems listed, plus the wanted ones) are at most 3x the wanted ones: each rule saved admits
  about two unwanted paths at most. Those still reach the handler, which drops and counts them
  (the monitor's `unwanted_signals`).
- Each wanted path is covered by its shallowest qualifying ancestor, else by a rule of its own.

Why 3x: for a serialbattery pack (victron-contract §4.1) and the engine's ~50 paths it selects /Alarms
(17 wanted of 17), /System (12 of 22), /Dc (3 of 4-6), /Io (3 of 4), /Info (5 of 13-15) and, when
history is read, /History; with the root-level paths and /Voltages/Sum as single rules a pack costs
13 rules (ItemsChanged included; 14 with /History), so 32 packs take 417 (449). At 2x /Info would
stay per-path (17 a pack, 32 packs = 545). Cell voltages,
the bulk of a pack's traffic (one signal per cell per poll), stay out: /Voltages holds one or two
wanted paths next to 4-32 cells, which fails both the >= 3 and the 3x test unless the cells
themselves are wanted. A publisher of many extra paths (serialbattery's optional /Info/Config/*)
pushes its namespace over 3x and back to single rules.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from aggbatt.bus.busitem import BUSITEM

# When a path_namespace rule replaces per-path rules (module docstring).
NAMESPACE_MIN_WANTED = 3
NAMESPACE_MAX_RATIO = 3


@dataclass(frozen=True)
class RulePlan:
    """The PropertiesChanged rules of one service: sub-trees and single paths."""

    namespaces: frozenset[str]
    paths: frozenset[str]


def _ancestors(path: str) -> list[str]:
    """'/Dc/0/Voltage' -> ['/Dc', '/Dc/0']: shallowest first, without '/' and the path itself."""
    parts = path.split("/")
    return ["/".join(parts[:n]) for n in range(2, len(parts))]


def plan_rules(wanted: Collection[str], known: Collection[str]) -> RulePlan:
    """Cover `wanted` with namespaces where they hold mostly wanted paths of the service's
    `known` ones, and single paths elsewhere (module docstring)."""
    wanted = set(wanted)
    # A namespace also matches the path equal to it, so "in N" counts N itself.
    wanted_in: dict[str, int] = {}
    paths_in: dict[str, int] = {}
    for path in wanted | set(known):
        for node in (*_ancestors(path), path):
            paths_in[node] = paths_in.get(node, 0) + 1
            if path in wanted:
                wanted_in[node] = wanted_in.get(node, 0) + 1
    namespaces: set[str] = set()
    for path in wanted:
        for node in _ancestors(path):
            count = wanted_in[node]
            if count >= NAMESPACE_MIN_WANTED and paths_in[node] <= NAMESPACE_MAX_RATIO * count:
                namespaces.add(node)
                break
    single = {p for p in wanted if not any(n in namespaces for n in (*_ancestors(p), p))}
    return RulePlan(frozenset(namespaces), frozenset(single))


def rules_for(owner: str, plan: RulePlan | None) -> set[str]:
    """Match rules for `plan`; None means every PropertiesChanged of the sender."""
    head = f"type='signal',sender='{owner}',"
    tail = f"interface='{BUSITEM}',member='PropertiesChanged'"
    rules = {head + f"path='/',interface='{BUSITEM}',member='ItemsChanged'"}
    if plan is None:
        rules.add(head + tail)
    else:
        rules.update(head + f"path_namespace='{n}'," + tail for n in plan.namespaces)
        rules.update(head + f"path='{p}'," + tail for p in plan.paths)
    return rules
