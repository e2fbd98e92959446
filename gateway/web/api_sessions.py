"""JSON API for live sessions: list, show, kill, and Modbus write windows (``/api/v1/sessions``).

Reads the shared ``live_sessions`` table, so every process and node answers alike. Who sees
a session: its own user; admins and auditors (roles); anyone holding ``watch``, ``kill`` or
``admin`` on its asset. Killing needs ``kill`` or ``admin`` on the asset (or the admin role)
and a second factor within the step-up limit, which only a portal session can show. A kill
is a request stored in the table, as ``conduit sessions kill`` stores it: the owner node
ends the session within half a second and audits ``session.kill`` as the requester. Missing
and forbidden sessions both answer 404; every refusal is audited as ``api.refused`` (see
``gateway.web.api_access``, whose authentication and refusal pattern this module shares).
A Modbus write window (``POST /sessions/{id}/write-window``, ``DELETE`` to end it early)
needs ``approve`` (or ``admin``) on the session's asset and the same recent second factor;
it is stored for the owner node as ``conduit sessions write-window`` stores it
(``gateway.sessions.write_windows``) and audited ``modbus.window_armed``/``_closed``.
Does not end sessions itself and does not decide access beyond asking the authorizer.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import AfterValidator, Field

from gateway.services import Services
from gateway.sessions import store as live_store
from gateway.sessions import write_windows
from gateway.sessions.store import LiveSessionRow
from gateway.web.api_access import (
    NOT_FOUND,
    AuditedRoute,
    Caller,
    Out,
    Refused,
    Strict,
    authenticated,
    require_step_up,
)
from gateway.web.auth import services_of, source_of
from rbac.roles import SiteAction

WATCH_ACTIONS = ("watch", "kill", "admin")
KILL_ACTIONS = ("kill", "admin")
ARM_ACTIONS = ("approve", "admin")  # who may arm Modbus writes on a session
MAX_REASON = live_store.KILL_NOTE_MAX  # the column that carries it; the CLI allows the same

SessionId = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")]


def _printable_reason(value: str) -> str:
    # Kept verbatim (it is the person's note, shown and audited as given), so only checked.
    if not value.strip() or not value.isprintable():
        raise ValueError("reason must be printable text")
    return value


Reason = Annotated[
    str, Field(min_length=1, max_length=MAX_REASON), AfterValidator(_printable_reason)
]


class KillIn(Strict):
    """``reason`` is the person's text: the session ends with end reason ``killed`` and this
    as its note (audit ``session.kill``/``session.end``, a marker in the recording)."""

    reason: Reason


def _printable_window_reason(value: str) -> str:
    return write_windows.check_reason(value)


WindowReason = Annotated[
    str,
    Field(min_length=1, max_length=write_windows.MAX_REASON),
    AfterValidator(_printable_window_reason),
]


class WriteWindowIn(Strict):
    """Arm Modbus writes on a live Modbus session for ``minutes``, for ``reason``."""

    minutes: int = Field(ge=write_windows.MIN_MINUTES, le=write_windows.MAX_MINUTES)
    reason: WindowReason


class WriteWindowOut(Out):
    session_id: str
    asset: str
    user: str
    armed_by: str
    reason: str
    opened_at: dt.datetime
    ends_at: dt.datetime


class SessionOut(Out):
    id: str
    user: str
    asset: str
    protocol: str
    started_at: dt.datetime
    valid_until: dt.datetime | None
    bytes_up: int
    bytes_down: int
    node: str
    kill_reason: str | None

    @classmethod
    def of(cls, r: LiveSessionRow) -> SessionOut:
        return cls(
            id=r.session_id, user=r.username, asset=r.asset, protocol=r.protocol,
            started_at=r.started_at, valid_until=r.valid_until, bytes_up=r.bytes_up,
            bytes_down=r.bytes_down, node=r.node, kill_reason=r.kill_reason,
        )  # fmt: skip


router = APIRouter(prefix="/api/v1", tags=["sessions"], route_class=AuditedRoute)
Reader = Annotated[Caller, Depends(authenticated("read"))]
Killer = Annotated[Caller, Depends(authenticated("kill"))]
Arming = Annotated[Caller, Depends(authenticated("approve"))]


class Capabilities:
    """What one caller may do per asset, asked once per asset within one request (the
    portal's live table shares it, so a page of 500 rows asks once per asset, not per row)."""

    def __init__(self, services: Services, caller: Caller) -> None:
        self._s = services
        self._caller = caller
        self._cache: dict[tuple[str, str], bool] = {}

    async def holds(self, asset: str, actions: tuple[str, ...]) -> bool:
        if self._caller.may(SiteAction.ANY_ASSET):
            return True
        for action in actions:
            key = (asset, action)
            if key not in self._cache:
                decision = await self._s.authz.authorize(self._caller.username, asset, action)
                self._cache[key] = decision.allowed
            if self._cache[key]:
                return True
        return False

    async def sees(self, row: LiveSessionRow) -> bool:
        if row.username == self._caller.username or self._caller.may(SiteAction.SEE_ALL_SESSIONS):
            return True
        return await self.holds(row.asset, WATCH_ACTIONS)

    async def kills(self, row: LiveSessionRow) -> bool:
        return await self.holds(row.asset, KILL_ACTIONS)

    async def arms(self, row: LiveSessionRow) -> bool:
        return row.protocol == "modbus" and await self.holds(row.asset, ARM_ACTIONS)


async def may_watch(services: Services, caller: Caller, asset: str) -> bool:
    """Whether ``caller`` may watch a session on ``asset`` (the watch page and websocket):
    ``watch``, ``kill`` or ``admin`` there, or the any-asset capability. Unlike seeing a
    session in the list, its own user and the see-all roles are not enough."""
    return await Capabilities(services, caller).holds(asset, WATCH_ACTIONS)


async def _visible(services: Services, caps: Capabilities, session_id: str) -> LiveSessionRow:
    async with services.sessions() as db:
        row = await live_store.get(db, session_id)
    if row is None:
        raise Refused(404, NOT_FOUND, f"no live session {session_id}")
    if not await caps.sees(row):
        raise Refused(404, NOT_FOUND, f"session {session_id} on {row.asset}: no watch capability")
    return row


async def kill_target(services: Services, caps: Capabilities, session_id: str) -> LiveSessionRow:
    """The live session ``caps`` may kill, or ``Refused`` (404 unseen, 403 no capability).
    Callers check step-up after this and before ``store_kill``."""
    row = await _visible(services, caps, session_id)
    if not await caps.kills(row):
        raise Refused(
            403, "not permitted: kill capability required", f"no kill capability on {row.asset}"
        )
    return row


async def store_kill(
    services: Services, row: LiveSessionRow, reason: str, actor: str, source: str
) -> LiveSessionRow:
    """Store the kill request for the owner node and audit ``session.kill_requested``;
    ``reason`` must already be a valid ``Reason``. ``Refused`` when it is gone or asked."""
    session_id = row.session_id
    async with services.sessions() as db, db.begin():
        marked = await live_store.request_kill(db, session_id, reason, actor)
        after = await live_store.get(db, session_id)
    if after is None:
        raise Refused(404, NOT_FOUND, f"session {session_id} ended before the kill")
    if not marked:
        raise Refused(
            409, "a kill is already requested", f"kill already requested: {after.kill_reason}"
        )
    await services.audit.record(
        actor=actor,
        action="session.kill_requested",
        result="success",
        target=session_id,
        source=source,
        detail={"note": reason, "asset": row.asset, "user": row.username},
    )
    return after


@router.get("/sessions", response_model=list[SessionOut])
async def list_sessions(request: Request, caller: Reader) -> list[SessionOut]:
    """Live sessions on every node the caller may see, oldest first."""
    services = services_of(request)
    async with services.sessions() as db:
        rows = await live_store.listing(db)
    caps = Capabilities(services, caller)
    return [SessionOut.of(r) for r in rows if await caps.sees(r)]


@router.get("/sessions/{session_id}", response_model=SessionOut)
async def get_session(request: Request, session_id: SessionId, caller: Reader) -> SessionOut:
    services = services_of(request)
    return SessionOut.of(await _visible(services, Capabilities(services, caller), session_id))


@router.post("/sessions/{session_id}/kill", status_code=202, response_model=SessionOut)
async def kill_session(
    request: Request, session_id: SessionId, body: KillIn, caller: Killer
) -> SessionOut:
    """Ask the owner node to end the session (within a second); 202 once the request is stored.

    The session is gone when ``GET /api/v1/sessions/{id}`` answers 404.
    """
    services = services_of(request)
    row = await kill_target(services, Capabilities(services, caller), session_id)
    require_step_up(caller, services.clock())
    after = await store_kill(services, row, body.reason, caller.username, source_of(request))
    return SessionOut.of(after)


async def arm_target(services: Services, caps: Capabilities, session_id: str) -> LiveSessionRow:
    """The live Modbus session ``caps`` may arm writes on, or ``Refused`` (404 unseen or
    not Modbus, 403 no approve capability). Callers check step-up after this."""
    row = await _visible(services, caps, session_id)
    if row.protocol != "modbus":
        raise Refused(404, NOT_FOUND, f"session {session_id} is {row.protocol}, not modbus")
    if not await caps.arms(row):
        raise Refused(
            403, "not permitted: approve capability required", f"no approve on {row.asset}"
        )
    return row


async def store_window(
    services: Services, row: LiveSessionRow, minutes: int, reason: str, actor: str, source: str
) -> WriteWindowOut:
    """Arm the window (audited); ``Refused`` 404 when the session ended meanwhile."""
    try:
        armed = await write_windows.arm_window(
            services, row.session_id, minutes=minutes, reason=reason, actor=actor, source=source
        )
    except write_windows.WindowRefused as exc:
        raise Refused(404, NOT_FOUND, exc.detail) from None
    return WriteWindowOut(
        session_id=armed.session_id, asset=armed.asset, user=armed.username,
        armed_by=armed.armed_by, reason=armed.reason, opened_at=armed.opened_at,
        ends_at=armed.ends_at,
    )  # fmt: skip


@router.post("/sessions/{session_id}/write-window", status_code=201, response_model=WriteWindowOut)
async def arm_write_window(
    request: Request, session_id: SessionId, body: WriteWindowIn, caller: Arming
) -> WriteWindowOut:
    """Arm Modbus writes on a live Modbus session for ``minutes`` (1-240), with a reason;
    the owner node applies it within a second and it ends by itself."""
    services = services_of(request)
    row = await arm_target(services, Capabilities(services, caller), session_id)
    require_step_up(caller, services.clock())
    return await store_window(
        services, row, body.minutes, body.reason, caller.username, source_of(request)
    )


@router.delete("/sessions/{session_id}/write-window", status_code=204)
async def close_write_window(request: Request, session_id: SessionId, caller: Arming) -> None:
    """End the session's open write window now (no step-up: it only takes power away)."""
    services = services_of(request)
    await arm_target(services, Capabilities(services, caller), session_id)
    await write_windows.close_window(
        services, session_id, actor=caller.username, source=source_of(request)
    )
