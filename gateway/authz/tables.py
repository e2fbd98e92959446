"""ORM tables for assets, zones, grants and access requests (migration 0004_authz)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.models import Base
from gateway.db.types import UTCDateTime

PROTOCOLS = ("ssh", "vnc", "rdp", "modbus")


class Asset(Base):
    __tablename__ = "assets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    protocol: Mapped[str] = mapped_column(String(8))
    description: Mapped[str] = mapped_column(String(500), default="")
    # Longest access a request may ask for on this asset, in hours.
    max_request_hours: Mapped[int] = mapped_column(Integer, default=8)
    record_input: Mapped[bool] = mapped_column(Boolean, default=True)
    # A disabled asset stays listed and keeps its grants, but no session opens to it.
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # Another protocol's asset with a Modbus/TCP port too (migration 0014); see modbus_port_of.
    modbus_port: Mapped[int | None] = mapped_column(Integer, default=None)
    # Passive inventory (migration 0014): what the device answered a vendor's own device
    # identification read (Modbus 43/14), and when. The gateway never asks by itself.
    ot_vendor: Mapped[str | None] = mapped_column(String(64), default=None)
    ot_product: Mapped[str | None] = mapped_column(String(64), default=None)
    ot_revision: Mapped[str | None] = mapped_column(String(64), default=None)
    ot_seen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)


def modbus_port_of(asset: Asset) -> int | None:
    """The asset's Modbus/TCP port, whose tunnels are protocol-aware: its own port when its
    protocol is ``modbus``, else its ``modbus_port`` (None: it has none)."""
    return asset.port if asset.protocol == "modbus" else asset.modbus_port


class Zone(Base):
    __tablename__ = "zones"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    parent: Mapped[str | None] = mapped_column(String(64), default=None)
    required_approvals: Mapped[int] = mapped_column(Integer, default=1)
    max_request_hours: Mapped[int | None] = mapped_column(Integer, default=None)
    # Whose members may approve here: ``role:NAME`` or ``org:NAME``; None: anyone holding
    # ``approve`` on the assets (the policy alone decides).
    approver_group: Mapped[str | None] = mapped_column(String(72), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class AssetZone(Base):
    __tablename__ = "asset_zones"
    __table_args__ = (UniqueConstraint("asset", "zone"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    asset: Mapped[str] = mapped_column(String(64), ForeignKey("assets.name", ondelete="CASCADE"))
    zone: Mapped[str] = mapped_column(String(64), ForeignKey("zones.name", ondelete="CASCADE"))


class Grant(Base):
    """One policy rule with its time limits; ``casbin_rule`` holds its p line."""

    __tablename__ = "grants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    subject: Mapped[str] = mapped_column(String(80))
    object: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(96))  # 32 before migration 0014
    effect: Mapped[str] = mapped_column(String(8), default="allow")
    schedule: Mapped[str | None] = mapped_column(String(500), default=None)
    valid_from: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    valid_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    request_id: Mapped[str | None] = mapped_column(String(40), default=None, index=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    revoked_by: Mapped[str | None] = mapped_column(String(64), default=None)


class AccessRequestRow(Base):
    __tablename__ = "access_requests"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    requester: Mapped[str] = mapped_column(String(64), index=True)
    assets: Mapped[str] = mapped_column(Text)  # JSON list of asset names
    actions: Mapped[str] = mapped_column(Text)  # JSON list of actions
    reason: Mapped[str] = mapped_column(Text)
    start: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    duration_seconds: Mapped[int] = mapped_column(Integer)
    required_approvals: Mapped[int] = mapped_column(Integer, default=1)
    pending_ttl_seconds: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    # Optimistic concurrency: every transition bumps it with a conditional UPDATE, so two
    # approvers racing on one request cannot both move it (and cannot make two grants).
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class RequestEventRow(Base):
    """History of a request: creation, each approval or denial, and each state change."""

    __tablename__ = "access_request_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("access_requests.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # created|approval|state
    state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    comment: Mapped[str] = mapped_column(Text, default="")


class PolicyVersion(Base):
    __tablename__ = "policy_version"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
