"""``conduit nodes list``: the gateway processes sharing this database, with their heartbeat
age and live sessions (docs/decisions/0017). Reads the ``nodes`` table; changes nothing.
"""

from __future__ import annotations

import argparse
import json

from gateway.cli.common import with_services
from gateway.services import Services
from gateway.sessions import cluster

Sub = argparse._SubParsersAction  # argparse has no public name for it


def add_nodes_commands(sub: Sub[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    nodes = sub.add_parser("nodes", help="gateway nodes sharing this database").add_subparsers(
        dest="nodes_command", metavar="ACTION", required=True
    )
    p = nodes.add_parser("list", parents=[common], help="list nodes, their workers and heartbeats")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=cmd_nodes_list)


def member_json(m: cluster.Member) -> dict[str, object]:
    return {
        "node": m.name,
        "worker": m.worker,
        "pid": m.pid,
        "version": m.version,
        "started_at": m.started_at.isoformat(),
        "heartbeat_at": m.heartbeat_at.isoformat(),
        "heartbeat_age_seconds": round(m.age, 1),
        "alive": m.alive,
        "live_sessions": m.live_sessions,
    }


def cmd_nodes_list(args: argparse.Namespace) -> int:
    async def work(services: Services) -> int:
        members = await cluster.members(services)
        if args.json:
            for m in members:
                print(json.dumps(member_json(m)))
            return 0
        print(
            f"{'NODE':24} {'WORKER':>6} {'PID':>8} {'VERSION':10} {'HEARTBEAT':>10} "
            f"{'STATE':6} {'SESSIONS':>8} STARTED (UTC)"
        )
        for m in members:
            started = m.started_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            print(
                f"{m.name:24} {m.worker:>6} {m.pid:>8} {m.version:10} {m.age:>9.1f}s "
                f"{'alive' if m.alive else 'dead':6} {m.live_sessions:>8} {started}"
            )
        return 0

    return with_services(args, work)
