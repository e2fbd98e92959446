"""Access requests in the database: create, approve, deny, cancel, revoke, expire.

The state machine is ``rbac.requests`` (pure); this module loads a request, applies one
transition and stores it with a conditional UPDATE on its version, so two approvers racing
on the same request cannot both move it: exactly one wins and makes the grants, the other
gets ``RequestConflict``. Approval creates one time-bounded grant per asset and action in
the same transaction. Eligibility (``approve`` on every asset of the request, right now) is
asked of the authorization service, never decided here; a zone that names an approver group
(a role or organisation) further limits who may decide requests for its assets to that
group's members, and an approver outside it is refused with a sentence naming the group.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.audit.sink import AuditSink
from gateway.authz.service import AuthzService, PolicyError, new_id
from gateway.authz.tables import AccessRequestRow, Asset, AssetZone, Grant, RequestEventRow, Zone
from gateway.errors import ConduitError
from gateway.sessions.events import Change, ChangeBus
from rbac import requests as rq
from rbac.availability import REQUEST_ACTION
from rbac.errors import RbacError
from rbac.names import check_action

Clock = Callable[[], dt.datetime]
log = logging.getLogger(__name__)


class RequestConflict(ConduitError):
    """Someone else changed the request at the same moment; nothing was changed."""


class RequestService:
    def __init__(
        self,
        authz: AuthzService,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        bus: ChangeBus,
        audit: AuditSink,
        pending_ttl: dt.timedelta = rq.DEFAULT_PENDING_TTL,
    ) -> None:
        self._authz = authz
        self._sessions = sessions
        self._clock = clock
        self._bus = bus
        self._audit = audit
        self._ttl = pending_ttl

    async def create(
        self,
        requester: str,
        assets: Sequence[str],
        actions: Sequence[str],
        reason: str,
        start: dt.datetime,
        duration: dt.timedelta,
        *,
        source: str = "",
    ) -> rq.AccessRequest:
        for action in actions:
            check_action(action)
        await self._check_requestable(requester, assets)
        now = self._clock()
        async with self._sessions() as db, db.begin():
            cap, approvals = await self._limits(db, assets)
            try:
                request = rq.new_request(
                    new_id("r"),
                    requester,
                    assets,
                    actions,
                    reason,
                    start,
                    duration,
                    now,
                    duration_cap=cap,
                    required_approvals=approvals,
                    pending_ttl=self._ttl,
                )
            except RbacError as exc:
                raise PolicyError(exc.message, exc.detail) from None
            db.add(
                AccessRequestRow(
                    id=request.request_id,
                    requester=requester,
                    assets=json.dumps(request.assets),
                    actions=json.dumps(request.actions),
                    reason=request.reason,
                    start=request.start,
                    duration_seconds=int(duration.total_seconds()),
                    required_approvals=approvals,
                    pending_ttl_seconds=int(self._ttl.total_seconds()),
                    state=request.state.value,
                    version=0,
                    created_at=now,
                    updated_at=now,
                )
            )
            await db.flush()
            db.add(
                RequestEventRow(
                    request_id=request.request_id,
                    kind="created",
                    state=request.state.value,
                    actor=requester,
                    at=now,
                    comment="",
                )
            )
        await self._after(request, "request.created", requester, source)
        return request

    async def _check_requestable(self, requester: str, assets: Sequence[str]) -> None:
        """Each asset must be one the policy lets ``requester`` ask for (the ``request``
        action, on the asset or its zone); otherwise the same answer as an unknown asset."""
        refused = [
            asset
            for asset in dict.fromkeys(assets)
            if not (await self._authz.authorize(requester, asset, REQUEST_ACTION)).allowed
        ]
        if refused:
            raise PolicyError(
                "not found or not permitted", f"{requester} may not request {sorted(refused)}"
            )

    async def _limits(self, db: AsyncSession, assets: Sequence[str]) -> tuple[dt.timedelta, int]:
        """Duration cap and approvals needed: the strictest over the assets and their zones."""
        if not assets:
            raise PolicyError("at least one asset is required")
        rows = {
            a.name: a
            for a in (await db.execute(select(Asset).where(Asset.name.in_(list(assets))))).scalars()
        }
        missing = sorted(set(assets) - set(rows))
        if missing:
            # The same answer as a forbidden asset would get elsewhere: it is not reachable.
            raise PolicyError("not found or not permitted", f"unknown assets {missing}")
        hours = [a.max_request_hours for a in rows.values()]
        approvals = [1]
        for zone in await self._zones_over(db, assets):
            approvals.append(zone.required_approvals)
            if zone.max_request_hours is not None:
                hours.append(zone.max_request_hours)
        return dt.timedelta(hours=min(hours)), max(approvals)

    @staticmethod
    async def _zones_over(db: AsyncSession, assets: Sequence[str]) -> list[Zone]:
        """The zones ``assets`` are placed in and every zone above those, each once."""
        zones = {z.name: z for z in (await db.execute(select(Zone))).scalars()}
        placed = (
            await db.execute(select(AssetZone.zone).where(AssetZone.asset.in_(list(assets))))
        ).scalars()
        found: dict[str, Zone] = {}
        for zone_name in placed:
            zone = zones.get(zone_name)
            while zone is not None and zone.name not in found:  # zones nest; cycles tolerated
                found[zone.name] = zone
                zone = zones.get(zone.parent) if zone.parent else None
        return list(found.values())

    async def approver_groups(self, assets: Sequence[str]) -> dict[str, str]:
        """zone -> group, for the zones over ``assets`` that name an approver group: whoever
        decides a request for these assets must be in every one of those groups."""
        async with self._sessions() as db:
            zones = await self._zones_over(db, assets)
        return {z.name: z.approver_group for z in zones if z.approver_group}

    async def deciders(self, assets: Sequence[str]) -> list[str]:
        """The people who may decide a request for ``assets``: ``approve`` on every asset
        and membership of every zone's approver group."""
        groups = set((await self.approver_groups(assets)).values())
        return [
            person
            for person in await self._authz.approvers_of(assets)
            if all([await self._authz.in_group(person, g) for g in groups])
        ]

    async def limits(self, assets: Sequence[str]) -> tuple[dt.timedelta, int]:
        """The longest window and the approvals a request for ``assets`` would get."""
        async with self._sessions() as db:
            return await self._limits(db, assets)

    async def count_decidable(self, person: str, approvable: frozenset[str] | None) -> int:
        """Pending requests of others whose every asset is in ``approvable`` (None: any
        asset), counted by the database: one COUNT, whatever the queue's length."""
        if approvable is not None and not approvable:
            return 0
        query = (
            select(func.count())
            .select_from(AccessRequestRow)
            .where(AccessRequestRow.state == "pending", AccessRequestRow.requester != person)
        )
        if approvable is not None:
            async with self._sessions() as db:
                names = list((await db.execute(select(Asset.name))).scalars())
            # ``assets`` is a JSON list of names, and a name never holds a quote, so a name
            # appears in it exactly when '"name"' does.
            for name in sorted(set(names) - approvable):
                query = query.where(
                    AccessRequestRow.assets.not_like(f'%"{_like_escape(name)}"%', escape="\\")
                )
        async with self._sessions() as db:
            return int((await db.execute(query)).scalar_one())

    async def get(self, request_id: str) -> rq.AccessRequest:
        async with self._sessions() as db:
            request, _ = await self._load(db, request_id)
            return request

    async def list_requests(
        self, *, state: str | None = None, requester: str | None = None
    ) -> list[rq.AccessRequest]:
        async with self._sessions() as db:
            query = select(AccessRequestRow.id).order_by(AccessRequestRow.created_at)
            if state:
                query = query.where(AccessRequestRow.state == state)
            if requester:
                query = query.where(AccessRequestRow.requester == requester)
            ids = list((await db.execute(query)).scalars())
            found: list[rq.AccessRequest] = []
            for request_id in ids:
                try:
                    found.append((await self._load(db, request_id))[0])
                except PolicyError as exc:
                    # One bad row (stored by an older version) must not hide all the others.
                    log.warning("skipping access request: %s", exc.detail)
            return found

    async def _load(self, db: AsyncSession, request_id: str) -> tuple[rq.AccessRequest, int]:
        row = await db.get(AccessRequestRow, request_id)
        if row is None:
            raise PolicyError("not found or not permitted", f"no request {request_id}")
        events = (
            await db.execute(
                select(RequestEventRow)
                .where(RequestEventRow.request_id == request_id)
                .order_by(RequestEventRow.id)
            )
        ).scalars()
        approvals: list[rq.Approval] = []
        history: list[rq.Transition] = []
        for event in events:
            if event.kind == "approval":
                approvals.append(rq.Approval(event.actor, event.at, event.comment))
            elif event.kind == "state":
                history.append(
                    rq.Transition(
                        rq.RequestState(event.state), event.at, event.actor, event.comment
                    )
                )
        try:
            request = self._request_of(row, approvals, history)
        except (RbacError, ValueError) as exc:  # ValueError: bad JSON or state text
            raise PolicyError(
                "not found or not permitted", f"request {request_id}: unreadable row: {exc}"
            ) from None
        return request, row.version

    @staticmethod
    def _request_of(
        row: AccessRequestRow, approvals: list[rq.Approval], history: list[rq.Transition]
    ) -> rq.AccessRequest:
        return rq.AccessRequest(
            request_id=row.id,
            requester=row.requester,
            assets=tuple(json.loads(row.assets)),
            actions=tuple(json.loads(row.actions)),
            reason=row.reason,
            start=row.start,
            duration=dt.timedelta(seconds=row.duration_seconds),
            created_at=row.created_at,
            required_approvals=row.required_approvals,
            pending_ttl=dt.timedelta(seconds=row.pending_ttl_seconds),
            state=rq.RequestState(row.state),
            approvals=tuple(approvals),
            history=tuple(history),
        )

    async def _eligible(self, request: rq.AccessRequest, person: str) -> tuple[set[str], str]:
        """({person}) when ``person`` may decide ``request``, else (set(), why not: "" for
        the policy's plain refusal, a sentence naming the zone's group otherwise)."""
        for asset in request.assets:
            if not (await self._authz.authorize(person, asset, "approve")).allowed:
                return set(), ""
        for zone, group in sorted((await self.approver_groups(request.assets)).items()):
            if not await self._authz.in_group(person, group):
                kind, _, name = group.partition(":")
                what = "role" if kind == "role" else "organisation"
                return set(), (
                    f"only members of the {what} {name} may decide requests in zone {zone}"
                )
        return {person}, ""

    async def approve(
        self, request_id: str, approver: str, comment: str = "", *, source: str = ""
    ) -> rq.AccessRequest:
        async def step(request: rq.AccessRequest) -> rq.AccessRequest:
            eligible, why = await self._eligible(request, approver)
            return rq.approve(
                request, approver, self._clock(), eligible=eligible, comment=comment,
                ineligible_reason=why,
            )  # fmt: skip

        return await self._transition(request_id, approver, step, source)

    async def deny(
        self, request_id: str, approver: str, comment: str = "", *, source: str = ""
    ) -> rq.AccessRequest:
        async def step(request: rq.AccessRequest) -> rq.AccessRequest:
            eligible, why = await self._eligible(request, approver)
            return rq.deny(
                request, approver, self._clock(), eligible=eligible, comment=comment,
                ineligible_reason=why,
            )  # fmt: skip

        return await self._transition(request_id, approver, step, source)

    async def cancel(self, request_id: str, actor: str, *, source: str = "") -> rq.AccessRequest:
        async def step(request: rq.AccessRequest) -> rq.AccessRequest:
            return rq.cancel(request, actor, self._clock())

        return await self._transition(request_id, actor, step, source)

    async def revoke(
        self, request_id: str, actor: str, comment: str = "", *, source: str = ""
    ) -> rq.AccessRequest:
        async def step(request: rq.AccessRequest) -> rq.AccessRequest:
            return rq.revoke(request, actor, self._clock(), comment=comment)

        return await self._transition(request_id, actor, step, source)

    async def expire_due(self) -> list[str]:
        """Expire every pending or approved request whose time has come."""
        now = self._clock()
        expired: list[str] = []
        for request in await self.list_requests(state="pending") + await self.list_requests(
            state="approved"
        ):
            due = rq.expires_at(request)
            if due is not None and due <= now:
                try:
                    await self._transition(
                        request.request_id, rq.SYSTEM_ACTOR, _expire_step(now), ""
                    )
                    expired.append(request.request_id)
                except RequestConflict:
                    continue  # another process expired or answered it first
                except (RbacError, ConduitError) as exc:
                    # One request that cannot move must not stop the others from expiring.
                    log.warning("cannot expire request %s: %s", request.request_id, exc.detail)
        return expired

    async def _transition(
        self, request_id: str, actor: str, step: Callable[[rq.AccessRequest], Any], source: str
    ) -> rq.AccessRequest:
        try:
            async with self._sessions() as db, db.begin():
                before, version = await self._load(db, request_id)
                try:
                    after: rq.AccessRequest = await step(before)
                except RbacError as exc:
                    await self._refused(request_id, actor, source, exc)
                    raise
                await self._store(db, before, after, version)
        except (OperationalError, DBAPIError) as exc:
            # SQLite reports a lost race as "database is locked"/busy snapshot: same outcome.
            raise RequestConflict(
                "the request changed meanwhile; reload and try again",
                f"request {request_id}: {type(exc).__name__}",
            ) from None
        kind = f"request.{after.state.value}" if after.state != before.state else "request.approval"
        await self._after(after, kind, actor, source)
        return after

    async def _store(
        self, db: AsyncSession, before: rq.AccessRequest, after: rq.AccessRequest, version: int
    ) -> None:
        now = self._clock()
        result = await db.execute(
            update(AccessRequestRow)
            .where(
                AccessRequestRow.id == after.request_id,
                AccessRequestRow.version == version,
            )
            .values(state=after.state.value, version=version + 1, updated_at=now)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise RequestConflict(
                "the request changed meanwhile; reload and try again",
                f"request {after.request_id}: version {version} is stale",
            )
        for approval in after.approvals[len(before.approvals) :]:
            db.add(
                RequestEventRow(
                    request_id=after.request_id,
                    kind="approval",
                    state=after.state.value,
                    actor=approval.approver,
                    at=approval.at,
                    comment=approval.comment,
                )
            )
        for transition in after.history[len(before.history) :]:
            db.add(
                RequestEventRow(
                    request_id=after.request_id,
                    kind="state",
                    state=transition.state.value,
                    actor=transition.actor,
                    at=transition.at,
                    comment=transition.comment,
                )
            )
        if after.state is rq.RequestState.APPROVED and before.state is rq.RequestState.PENDING:
            for asset in after.assets:
                for action in after.actions:
                    await self._authz.add_grant(
                        subject_kind="user",
                        subject=after.requester,
                        object_kind="asset",
                        obj=asset,
                        action=action,
                        actor=after.history[-1].actor,
                        valid_from=after.start,
                        valid_until=after.end,
                        request_id=after.request_id,
                        db=db,
                    )
        if after.state in (rq.RequestState.REVOKED, rq.RequestState.EXPIRED):
            grants = (
                await db.execute(
                    select(Grant).where(
                        Grant.request_id == after.request_id, Grant.revoked_at.is_(None)
                    )
                )
            ).scalars()
            for grant in list(grants):
                await self._authz.revoke_in(db, grant, after.history[-1].actor)

    async def _refused(self, request_id: str, actor: str, source: str, exc: RbacError) -> None:
        await self._audit.record(
            actor=actor,
            action="request.refused",
            result="denied",
            target=request_id,
            source=source,
            detail={"reason": exc.detail},
        )

    async def _after(self, request: rq.AccessRequest, kind: str, actor: str, source: str) -> None:
        await self._authz.refresh()
        self._bus.publish(Change(kind, (request.request_id,)))
        await self._audit.record(
            actor=actor,
            action=kind,
            result="success",
            target=request.request_id,
            source=source,
            detail={
                "requester": request.requester,
                "assets": ",".join(request.assets),
                "actions": ",".join(request.actions),
                "state": request.state.value,
            },
        )


def _expire_step(now: dt.datetime) -> Callable[[rq.AccessRequest], Any]:
    async def step(request: rq.AccessRequest) -> rq.AccessRequest:
        return rq.expire(request, now)

    return step


def _like_escape(name: str) -> str:
    return name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
