"""Persist policy lines through casbin-async-sqlalchemy-adapter and load them into rbac's index.

``casbin_rule`` holds p lines (``subject, object, action, grant id, effect``), g lines (role
nesting) and g2 lines (asset/zone containment), written through the adapter inside the
caller's transaction. Each grant's window lives in ``grants``; user -> role/organisation
membership comes from the identity tables. Every write bumps ``policy_version`` in the same
transaction. Does not decide anything (``rbac.policy`` does) and does not audit.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import casbin
from casbin_async_sqlalchemy_adapter import Adapter
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

import rbac
from gateway.authz.tables import Grant, PolicyVersion
from gateway.db.models import User
from gateway.sessions import notify
from rbac.errors import PolicyNameError
from rbac.policy import PolicyIndex, Rule
from rbac.windows import AbsoluteWindow, parse_schedule

log = logging.getLogger(__name__)
MODEL_PATH = Path(rbac.__file__).with_name("model.conf")
# Open-ended grants get these bounds so one AbsoluteWindow type covers every case.
FAR_PAST = datetime(1970, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(9000, 1, 1, tzinfo=UTC)


def _adapter(db: AsyncSession) -> Adapter:
    return Adapter(db.bind, db_session=db)


async def bump_version(db: AsyncSession) -> None:
    """Mark policy changed; other processes and nodes reload (woken by a notification at
    commit on PostgreSQL, else by their poll)."""
    await db.execute(
        update(PolicyVersion).where(PolicyVersion.id == 1).values(version=PolicyVersion.version + 1)
    )
    await notify.announce(db, notify.POLICY_CHANNEL)


async def current_version(db: AsyncSession) -> int:
    return int(
        (await db.execute(select(PolicyVersion.version).where(PolicyVersion.id == 1))).scalar_one()
    )


async def add_p(db: AsyncSession, grant: Grant) -> None:
    line = [grant.subject, grant.object, grant.action, grant.id, grant.effect]
    await _adapter(db).add_policy("p", "p", line)
    await bump_version(db)


async def remove_p(db: AsyncSession, grant: Grant) -> None:
    line = [grant.subject, grant.object, grant.action, grant.id, grant.effect]
    await _adapter(db).remove_policy("p", "p", line)
    await bump_version(db)


async def add_g(db: AsyncSession, ptype: str, child: str, parent: str) -> None:
    await _adapter(db).add_policy("g", ptype, [child, parent])
    await bump_version(db)


async def remove_g(db: AsyncSession, ptype: str, child: str, parent: str) -> None:
    await _adapter(db).remove_policy("g", ptype, [child, parent])
    await bump_version(db)


def rule_for(grant: Grant) -> Rule:
    window = None
    if grant.valid_from is not None or grant.valid_until is not None:
        window = AbsoluteWindow(grant.valid_from or FAR_PAST, grant.valid_until or FAR_FUTURE)
    schedule = parse_schedule(grant.schedule) if grant.schedule else None
    return Rule(
        grant.id,
        grant.subject,
        grant.object,
        grant.action,
        effect="deny" if grant.effect == "deny" else "allow",
        schedule=schedule,
        window=window,
    )


async def load_index(db: AsyncSession) -> tuple[PolicyIndex, frozenset[str], int]:
    """A fresh index, the active user names, and the policy version it reflects."""
    version = await current_version(db)
    enforcer = casbin.AsyncEnforcer(str(MODEL_PATH), _adapter(db))
    await enforcer.load_policy()
    grants = {
        g.id: g
        for g in (await db.execute(select(Grant).where(Grant.revoked_at.is_(None)))).scalars()
    }
    index = PolicyIndex()
    for sub, obj, act, grant_id, effect in enforcer.get_policy():
        grant = grants.get(grant_id)
        if grant is None or (grant.subject, grant.object, grant.action, grant.effect) != (
            sub,
            obj,
            act,
            effect,
        ):
            # A policy line without its grant row (or disagreeing with it) is not trusted.
            log.error("policy line for grant %s has no matching grant row; ignored", grant_id)
            continue
        index.add_rule(rule_for(grant))
    for child, parent in enforcer.get_grouping_policy():
        index.add_member(child, parent)
    for child, parent in enforcer.get_named_grouping_policy("g2"):
        index.add_inside(child, parent)
    active: set[str] = set()
    for user in (await db.execute(select(User))).scalars():
        if user.status != "active":
            continue  # inactive accounts belong to no role, so no grant reaches them
        active.add(user.username)
        groups = [f"role:{role}" for role in user.role_names]
        if user.organisation:
            groups.append(f"org:{user.organisation}")
        for group in groups:
            try:
                index.add_member(f"user:{user.username}", group)
            except PolicyNameError:
                # A stored name the policy cannot hold (written before names were checked at
                # the edge, or by hand): this membership grants nothing; nobody else loses
                # access because of it (the whole policy failing would lock everyone out).
                log.error("user %s: %s is no valid policy name; left out", user.username, group)
    return index, frozenset(active), version
