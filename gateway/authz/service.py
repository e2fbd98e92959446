"""The authorization service: decisions, assets, zones and grants, kept in step across processes.

``authorize`` answers from an in-memory ``rbac.policy.PolicyIndex``; before each answer it
reads ``policy_version`` (one indexed row) and reloads when another process or node changed
policy, so a revoke made with the CLI binds the serving process at its next decision. Every
change bumps the version in its own transaction, publishes a change event and is audited.
Missing and forbidden look the same to callers' users; the Decision's reason says which.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.audit.sink import AuditSink
from gateway.authz import policy_store
from gateway.authz.tables import PROTOCOLS, Asset, AssetZone, Grant, Zone
from gateway.db.models import ROLES
from gateway.errors import ConduitError
from gateway.sessions.events import Change, ChangeBus
from rbac.availability import AssetAccess, asset_access
from rbac.errors import RbacError, WindowError
from rbac.modbus import is_modbus_action
from rbac.names import TUNNEL_RE, check_action, check_name, logs_in, split_term, term
from rbac.policy import Decision, PolicyIndex
from rbac.windows import check_instant, parse_schedule

Clock = Callable[[], dt.datetime]
# With "ssh" and "tunnel:<port>", what the SSH jump host carries.


class PolicyError(ConduitError):
    """A policy change is malformed or refers to something that does not exist."""


MAX_REQUEST_HOURS = 7 * 24  # as long as the API lets a request last
MAX_APPROVALS = 20


def _instant(value: dt.datetime | None, what: str) -> dt.datetime | None:
    """``value`` in the documented range (rbac.windows.check_instant), or ``PolicyError``."""
    if value is None:
        return None
    try:
        return check_instant(value, what)
    except WindowError as exc:
        raise PolicyError(exc.message, exc.detail) from None


def approver_group(value: str | None) -> str | None:
    """A zone's approver group as stored (``role:NAME`` / ``org:NAME``), or ``PolicyError``."""
    if not value:
        return None
    try:
        kind, _ = split_term(value)
    except RbacError as exc:
        raise PolicyError(f"approver group {value[:80]!r} is not role:NAME or org:NAME") from exc
    if kind not in ("role", "org"):
        raise PolicyError(f"approver group {value[:80]!r} is not role:NAME or org:NAME")
    return value


def _request_hours(value: int | None) -> None:
    if value is not None and not 1 <= value <= MAX_REQUEST_HOURS:
        raise PolicyError(f"max request hours must be 1-{MAX_REQUEST_HOURS}")


@dataclass(frozen=True)
class AssetOverview:
    """One line of "My access": the asset as stored, its zones, and the person's state."""

    name: str
    protocol: str
    zones: tuple[str, ...]
    max_request_hours: int
    access: AssetAccess


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


class AuthzService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        bus: ChangeBus,
        audit: AuditSink,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._bus = bus
        self._audit = audit
        self._index = PolicyIndex()
        self._active: frozenset[str] = frozenset()
        self._assets: frozenset[str] = frozenset()
        self._disabled: frozenset[str] = frozenset()
        self._version = -1
        self._reload_lock = asyncio.Lock()

    # -- decisions -----------------------------------------------------------------------
    async def refresh(self, *, force: bool = False) -> bool:
        """Reload the index if policy changed anywhere; True when it reloaded."""
        async with self._sessions() as db:
            version = await policy_store.current_version(db)
            if version == self._version and not force:
                return False
            async with self._reload_lock:
                index, active, loaded = await policy_store.load_index(db)
                rows = (await db.execute(select(Asset.name, Asset.disabled))).all()
                self._index, self._active, self._version = index, active, loaded
                self._assets = frozenset(name for name, _ in rows)
                self._disabled = frozenset(name for name, off in rows if off)
        self._bus.publish(Change("policy.reloaded", (str(loaded),)))
        return True

    async def authorize(
        self, username: str, asset: str, action: str, now: dt.datetime | None = None
    ) -> Decision:
        await self.refresh()
        when = now or self._clock()
        if username not in self._active:
            return Decision(False, f"user:{username} is not an active account")
        if asset not in self._assets:
            return Decision(False, f"asset:{asset} does not exist")
        if asset in self._disabled:
            return Decision(False, f"asset:{asset} is disabled")
        return self._index.authorize(f"user:{username}", f"asset:{asset}", action, when)

    async def reachable_now(self, username: str) -> list[tuple[str, str, Decision]]:
        """(asset, action, decision) for everything ``username`` may do right now."""
        await self.refresh()
        now = self._clock()
        out: list[tuple[str, str, Decision]] = []
        if username not in self._active:
            return out
        actions = sorted({r.action for r in self._index.rules()})
        for asset in sorted(self._assets - self._disabled):
            for action in actions:
                decision = self._index.authorize(f"user:{username}", f"asset:{asset}", action, now)
                if decision.allowed:
                    out.append((asset, action, decision))
        return out

    async def reachable_over_ssh(self, username: str, asset: str) -> Decision:
        """May ``username`` use ``asset`` through the SSH jump host now: a shell, files or a
        tunnel (a Modbus action is a tunnel to the asset's Modbus port)? (Whether to make a
        connect code; the broker still decides every session.)
        A refusal's reason says whether the asset is missing or not granted."""
        decision = await self.authorize(username, asset, "ssh")
        if decision.allowed:
            return decision
        for name, action, other in await self.reachable_now(username):
            tunnels = TUNNEL_RE.fullmatch(action) is not None or is_modbus_action(action)
            if name == asset and (logs_in(action) or tunnels):
                return other
        return decision

    async def access_overview(
        self, username: str, pending: Iterable[str] = ()
    ) -> list[AssetOverview]:
        """Every asset ``username`` has to do with now (``rbac.availability``), by name;
        ``pending`` names the assets of the person's requests waiting for a decision."""
        await self.refresh()
        now = self._clock()
        waiting = frozenset(pending)
        if username not in self._active:
            return []
        actions = sorted({r.action for r in self._index.rules()})
        out: list[AssetOverview] = []
        for asset, zones in await self.list_assets():
            if asset.disabled:
                continue
            access = asset_access(
                self._index, f"user:{username}", f"asset:{asset.name}", actions, now,
                pending=asset.name in waiting,
            )  # fmt: skip
            if access is not None:
                out.append(
                    AssetOverview(
                        asset.name, asset.protocol, tuple(zones), asset.max_request_hours, access
                    )
                )
        return out

    async def approvable_assets(self, username: str) -> frozenset[str]:
        """The assets on which ``username`` holds ``approve`` right now."""
        await self.refresh()
        now = self._clock()
        if username not in self._active:
            return frozenset()
        subject = f"user:{username}"
        return frozenset(
            a for a in self._assets
            if self._index.authorize(subject, f"asset:{a}", "approve", now).allowed
        )  # fmt: skip

    async def modbus_grants(self, username: str, asset: str) -> list[tuple[str, Decision]]:
        """Every Modbus action (``rbac.modbus``) ``username`` holds on ``asset`` right now,
        with its decision, by name: what a protocol-aware tunnel's requests are judged by."""
        await self.refresh()
        actions = sorted({r.action for r in self._index.rules() if is_modbus_action(r.action)})
        out = []
        for action in actions:
            decision = await self.authorize(username, asset, action)
            if decision.allowed:
                out.append((action, decision))
        return out

    async def record_inventory(
        self, asset: str, identity: dict[str, str], seen_at: dt.datetime
    ) -> bool:
        """Store what a device said about itself (vendor, product, revision) on ``asset``
        with the time seen; True when anything changed (the time alone is not a change).
        Not a policy change: no version bump, no change event."""
        async with self._sessions() as db, db.begin():
            row = await self.asset(db, asset)
            if row is None:
                return False
            new = (identity.get("vendor"), identity.get("product"), identity.get("revision"))
            changed = new != (row.ot_vendor, row.ot_product, row.ot_revision)
            row.ot_vendor, row.ot_product, row.ot_revision = new
            row.ot_seen_at = seen_at
        return changed

    async def approvers_of(self, assets: Iterable[str]) -> list[str]:
        """Active people holding ``approve`` on every one of ``assets`` right now."""
        await self.refresh()
        now = self._clock()
        wanted = list(assets)
        return sorted(
            user for user in self._active
            if all(self._index.authorize(f"user:{user}", f"asset:{a}", "approve", now).allowed
                   for a in wanted)
        )  # fmt: skip

    async def organisations_of(self, username: str) -> list[str]:
        """The organisations policy places ``username`` in (``g``: ``org:...``)."""
        await self.refresh()
        member = f"user:{username}"
        return sorted(
            group.partition(":")[2]
            for who, group in self._index.memberships()
            if who == member and group.startswith("org:")
        )

    async def in_group(self, username: str, group: str) -> bool:
        """Does policy place ``username`` in ``group`` (``role:...``/``org:...``, nested
        roles included)?"""
        await self.refresh()
        return group in self._index.groups_of(f"user:{username}")

    async def groups(self) -> list[str]:
        """The groups a zone may name as its approvers: every site role (``role:NAME``) and
        every organisation someone belongs to (``org:NAME``)."""
        await self.refresh()
        orgs = {g for _, g in self._index.memberships() if g.startswith("org:")}
        return [f"role:{r}" for r in ROLES] + sorted(orgs)

    # -- changes -------------------------------------------------------------------------
    async def _changed(self, change: Change, actor: str, detail: dict[str, Any]) -> None:
        await self.refresh()
        self._bus.publish(change)
        await self._audit.record(
            actor=actor,
            action=change.kind,
            result="success",
            target=",".join(change.ids),
            detail=detail,
        )

    async def add_asset(
        self,
        name: str,
        host: str,
        port: int,
        protocol: str,
        *,
        actor: str,
        zones: tuple[str, ...] = (),
        max_request_hours: int = 8,
        record_input: bool = True,
        modbus_port: int | None = None,
    ) -> Asset:
        check_name(name, "asset")
        if protocol not in PROTOCOLS:
            raise PolicyError(f"protocol must be one of {', '.join(PROTOCOLS)}")
        if not 1 <= port <= 65535:
            raise PolicyError("port must be 1-65535")
        if modbus_port is not None and (protocol == "modbus" or not 1 <= modbus_port <= 65535):
            raise PolicyError("modbus port must be 1-65535, on an asset of another protocol")
        if not host or len(host) > 255 or any(c.isspace() for c in host):
            raise PolicyError("host must be a host name or address")
        _request_hours(max_request_hours)
        async with self._sessions() as db, db.begin():
            if (await db.execute(select(Asset.id).where(Asset.name == name))).first():
                raise PolicyError(f"asset {name} already exists")
            asset = Asset(
                name=name,
                host=host,
                port=port,
                protocol=protocol,
                max_request_hours=max_request_hours,
                record_input=record_input,
                modbus_port=modbus_port,
                created_at=self._clock(),
            )
            db.add(asset)
            await db.flush()
            for zone in zones:
                await self._place(db, f"asset:{name}", zone)
            await policy_store.bump_version(db)
        await self._changed(
            Change("asset.added", (name,)),
            actor,
            {"host": host, "port": port, "protocol": protocol},
        )
        return asset

    async def add_zone(
        self,
        name: str,
        *,
        actor: str,
        parent: str | None = None,
        required_approvals: int = 1,
        max_request_hours: int | None = None,
        approvers: str | None = None,
    ) -> None:
        check_name(name, "zone")
        if not 1 <= required_approvals <= MAX_APPROVALS:
            raise PolicyError(f"required approvals must be 1-{MAX_APPROVALS}")
        _request_hours(max_request_hours)
        approvers = approver_group(approvers)
        async with self._sessions() as db, db.begin():
            if (await db.execute(select(Zone.id).where(Zone.name == name))).first():
                raise PolicyError(f"zone {name} already exists")
            db.add(
                Zone(
                    name=name,
                    parent=parent,
                    required_approvals=required_approvals,
                    max_request_hours=max_request_hours,
                    approver_group=approvers,
                    created_at=self._clock(),
                )
            )
            await db.flush()
            if parent is not None:
                await self._place(db, f"zone:{name}", parent)
            await policy_store.bump_version(db)
        await self._changed(
            Change("zone.added", (name,)),
            actor,
            {"parent": parent or "", "approver_group": approvers or ""},
        )

    async def place(self, asset: str, zone: str, *, actor: str) -> None:
        async with self._sessions() as db, db.begin():
            if not (await db.execute(select(Asset.id).where(Asset.name == asset))).first():
                raise PolicyError(f"asset {asset} does not exist")
            await self._place(db, f"asset:{asset}", zone)
        await self._changed(Change("asset.placed", (asset, zone)), actor, {})

    async def _place(self, db: AsyncSession, item: str, zone: str) -> None:
        if not (await db.execute(select(Zone.id).where(Zone.name == zone))).first():
            raise PolicyError(f"zone {zone} does not exist")
        kind, name = item.split(":", 1)
        if kind == "asset":
            db.add(AssetZone(asset=name, zone=zone))
        await policy_store.add_g(db, "g2", item, f"zone:{zone}")

    async def add_grant(
        self,
        *,
        subject_kind: str,
        subject: str,
        object_kind: str,
        obj: str,
        action: str,
        actor: str,
        schedule: str | None = None,
        valid_from: dt.datetime | None = None,
        valid_until: dt.datetime | None = None,
        effect: str = "allow",
        request_id: str | None = None,
        db: AsyncSession | None = None,
    ) -> Grant:
        """Standing access (schedule and/or absolute window) or an explicit deny."""
        check_action(action)
        if schedule is not None:
            parse_schedule(schedule)  # refuse bad text before storing it
        valid_from = _instant(valid_from, "valid_from")
        valid_until = _instant(valid_until, "valid_until")
        if valid_from and valid_until and valid_until <= valid_from:
            raise PolicyError("--until must be after --from")
        if effect not in ("allow", "deny"):
            raise PolicyError("effect must be allow or deny")
        grant = Grant(
            id=new_id("g"),
            subject=term(subject_kind, subject),
            object=term(object_kind, obj),
            action=action,
            effect=effect,
            schedule=schedule,
            valid_from=valid_from,
            valid_until=valid_until,
            request_id=request_id,
            created_by=actor,
            created_at=self._clock(),
        )
        if db is not None:  # part of a larger transaction (request approval)
            await self._store_grant(db, grant, object_kind, obj)
            return grant
        async with self._sessions() as own, own.begin():
            await self._store_grant(own, grant, object_kind, obj)
        await self._changed(Change("grant.added", (grant.id,)), actor, _grant_detail(grant))
        return grant

    async def _store_grant(self, db: AsyncSession, grant: Grant, kind: str, name: str) -> None:
        table = Asset if kind == "asset" else Zone
        if not (await db.execute(select(table.id).where(table.name == name))).first():
            raise PolicyError(f"{kind} {name} does not exist")
        db.add(grant)
        await db.flush()
        await policy_store.add_p(db, grant)

    async def revoke_grant(self, grant_id: str, *, actor: str) -> Grant:
        async with self._sessions() as db, db.begin():
            grant = await db.get(Grant, grant_id)
            if grant is None or grant.revoked_at is not None:
                raise PolicyError(f"no active grant {grant_id}")
            await self.revoke_in(db, grant, actor)
        await self._changed(Change("grant.revoked", (grant_id,)), actor, _grant_detail(grant))
        return grant

    async def revoke_in(self, db: AsyncSession, grant: Grant, actor: str) -> None:
        grant.revoked_at = self._clock()
        grant.revoked_by = actor
        await policy_store.remove_p(db, grant)

    async def list_grants(self, *, include_revoked: bool = False) -> list[Grant]:
        async with self._sessions() as db:
            query = select(Grant).order_by(Grant.created_at)
            if not include_revoked:
                query = query.where(Grant.revoked_at.is_(None))
            return list((await db.execute(query)).scalars())

    # -- administration (the admin pages; the CLI's add commands are above) ------------------
    async def list_zones(self) -> list[Zone]:
        async with self._sessions() as db:
            return list((await db.execute(select(Zone).order_by(Zone.name))).scalars())

    async def update_zone(
        self,
        name: str,
        *,
        actor: str,
        required_approvals: int,
        max_request_hours: int | None,
        approvers: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Change a zone's approval rules (``approvers``: the group whose members may
        approve, None: anyone holding ``approve``); (before, after) for the caller's audit."""
        if not 1 <= required_approvals <= MAX_APPROVALS:
            raise PolicyError(f"required approvals must be 1-{MAX_APPROVALS}")
        _request_hours(max_request_hours)
        approvers = approver_group(approvers)
        async with self._sessions() as db, db.begin():
            zone = (await db.execute(select(Zone).where(Zone.name == name))).scalar_one_or_none()
            if zone is None:
                raise PolicyError(f"zone {name} does not exist")
            before = zone_facts(zone)
            zone.required_approvals = required_approvals
            zone.max_request_hours = max_request_hours
            zone.approver_group = approvers
            after = zone_facts(zone)
            await policy_store.bump_version(db)
        await self._changed(
            Change("zone.changed", (name,)), actor, {"before": before, "after": after}
        )
        return before, after

    async def update_asset(
        self,
        name: str,
        *,
        actor: str,
        host: str,
        port: int,
        zones: tuple[str, ...],
        max_request_hours: int,
        record_input: bool,
        disabled: bool,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Change an asset's address, zones, limits, input recording or disabled state;
        (before, after) for the caller's audit event. The protocol is fixed at creation."""
        if not 1 <= port <= 65535:
            raise PolicyError("port must be 1-65535")
        if not host or len(host) > 255 or any(c.isspace() for c in host):
            raise PolicyError("host must be a host name or address")
        _request_hours(max_request_hours)
        async with self._sessions() as db, db.begin():
            asset = await self.asset(db, name)
            if asset is None:
                raise PolicyError(f"asset {name} does not exist")
            placed = await db.execute(select(AssetZone).where(AssetZone.asset == name))
            old_places = {row.zone: row for row in placed.scalars()}
            before = asset_facts(asset, sorted(old_places))
            asset.host, asset.port = host, port
            asset.max_request_hours, asset.record_input = max_request_hours, record_input
            asset.disabled = disabled
            for zone in sorted(set(old_places) - set(zones)):
                await db.delete(old_places[zone])
                await policy_store.remove_g(db, "g2", f"asset:{name}", f"zone:{zone}")
            for zone in sorted(set(zones) - set(old_places)):
                await self._place(db, f"asset:{name}", zone)
            after = asset_facts(asset, sorted(set(zones)))
            await policy_store.bump_version(db)
        await self._changed(
            Change("asset.changed", (name,)), actor, {"before": before, "after": after}
        )
        return before, after

    async def asset(self, db: AsyncSession, name: str) -> Asset | None:
        return (await db.execute(select(Asset).where(Asset.name == name))).scalar_one_or_none()

    async def list_assets(self) -> list[tuple[Asset, list[str]]]:
        async with self._sessions() as db:
            assets = list((await db.execute(select(Asset).order_by(Asset.name))).scalars())
            places = (await db.execute(select(AssetZone.asset, AssetZone.zone))).all()
        zones: dict[str, list[str]] = {}
        for asset, zone in places:
            zones.setdefault(asset, []).append(zone)
        return [(a, sorted(zones.get(a.name, []))) for a in assets]


def zone_facts(zone: Zone) -> dict[str, Any]:
    """A zone's settings as audit events show them before and after a change."""
    return {
        "parent": zone.parent or "",
        "required_approvals": zone.required_approvals,
        "max_request_hours": zone.max_request_hours,
        "approver_group": zone.approver_group or "",
    }


def asset_facts(asset: Asset, zones: list[str]) -> dict[str, Any]:
    """An asset's settings as audit events show them before and after a change."""
    return {
        "host": asset.host,
        "port": asset.port,
        "protocol": asset.protocol,
        "zones": zones,
        "max_request_hours": asset.max_request_hours,
        "record_input": bool(asset.record_input),
        "disabled": bool(asset.disabled),
    }


def _grant_detail(grant: Grant) -> dict[str, Any]:
    return {
        "subject": grant.subject,
        "object": grant.object,
        "action_granted": grant.action,
        "effect": grant.effect,
        "schedule": grant.schedule or "",
        "from": grant.valid_from.isoformat() if grant.valid_from else "",
        "until": grant.valid_until.isoformat() if grant.valid_until else "",
        "request": grant.request_id or "",
    }
