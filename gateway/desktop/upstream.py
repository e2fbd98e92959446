"""The broker's desktop connector: from a checked ticket to an authenticated RFB connection.

A VNC asset is reached directly (``vnc.open_vnc``: the vaulted password, the pinned
certificate when the asset has one). An RDP asset gets its own renderer first
(``renderer.RDPRenderer``: the vaulted account and password, the newest pinned certificate,
channels by grant); the gateway then reads the renderer's private RFB socket with security
None. ``conduit serve`` registers ``connect`` with the broker. Does not decide access (the
ticket was decided and checked) and records nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from gateway.desktop import freerdp
from gateway.desktop.freerdp import RenderRequest, RenderRequestError
from gateway.desktop.renderer import RDPRenderer, RendererEnd, RendererLimits
from gateway.desktop.vnc import VncConnection, VncTarget, open_vnc
from gateway.errors import UpstreamError
from gateway.sessions.ticket import Ticket
from gateway.vault import Credential

DEFAULT_SIZE = (1280, 800)

# What the vendor reads when their RDP desktop ends on its own (renderer end codes).
RENDERER_ENDS = {
    freerdp.SERVER_CLOSED: ("closed", "the remote desktop was closed (logged off)"),
    freerdp.CRASHED: ("renderer_crashed", "the desktop renderer stopped unexpectedly"),
    freerdp.AUTH_FAILED: ("upstream_failed", "the asset refused the vaulted credential"),
    freerdp.CONNECT_REFUSED: ("upstream_failed", "the asset is not reachable"),
    freerdp.CERT_MISMATCH: ("upstream_failed", "the asset's identity could not be verified"),
    freerdp.START_TIMEOUT: ("upstream_failed", "the asset's desktop did not come up in time"),
}


@dataclass
class DesktopUpstream:
    """An open desktop: the RFB connection and, for RDP, the renderer drawing it."""

    connection: VncConnection
    renderer: RDPRenderer | None = None

    @property
    def renderer_end(self) -> asyncio.Future[RendererEnd] | None:
        return self.renderer.ended if self.renderer is not None else None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.connection.close()
        if self.renderer is not None:
            await self.renderer.stop()


def renderer_end_words(end: RendererEnd) -> tuple[str, str]:
    """(session end reason, line shown) for a renderer that ended by itself."""
    return RENDERER_ENDS.get(end.reason, ("upstream_failed", "the remote desktop ended"))


async def connect(
    ticket: Ticket,
    credential: Credential | None,
    grants: frozenset[str],
    size: tuple[int, int] | None = None,
    limits: RendererLimits | None = None,
) -> DesktopUpstream:
    target = ticket.target
    label = f"asset:{ticket.asset}"
    if target.protocol == "vnc":
        password = credential.password if credential is not None else None
        vnc_target = VncTarget(
            host=target.host,
            port=target.port,
            certificate_pins=target.certificate_pins,
            no_auth=credential is None,
            label=label,
        )
        return DesktopUpstream(await open_vnc(vnc_target, password))
    if target.protocol != "rdp":
        raise UpstreamError("the asset has no desktop", f"{label}: protocol {target.protocol}")
    if credential is None or not credential.password:
        raise UpstreamError(
            "no account is vaulted for this remote desktop", f"{label}: no RDP password vaulted"
        )
    if not target.certificate_pins:
        raise UpstreamError(
            "the asset's identity is not pinned; ask an administrator to pin its certificate",
            f"{label}: no RDP certificate pinned",
        )
    width, height = size or DEFAULT_SIZE
    width = min(max(width, freerdp.MIN_WIDTH), freerdp.MAX_WIDTH)
    height = min(max(height, freerdp.MIN_HEIGHT), freerdp.MAX_HEIGHT)
    try:
        request = RenderRequest(
            host=target.host,
            port=target.port,
            username=credential.username,
            password=credential.password,
            fingerprint=target.certificate_pins[-1],  # the newest pin
            width=width - width % 2,
            height=height,
            grants=grants & freerdp.GRANTS,
        )
    except RenderRequestError as exc:
        raise UpstreamError(exc.message, f"{label}: {exc.detail}") from None
    renderer = RDPRenderer(request, limits)
    socket_path = await renderer.start()  # raises RendererFailed / RDPCertificateMismatch
    try:
        connection = await open_vnc(
            VncTarget(unix_path=str(socket_path), no_auth=True, label=label), None
        )
    except BaseException:
        await renderer.stop()
        raise
    return DesktopUpstream(connection, renderer)
