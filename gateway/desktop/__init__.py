"""Desktop sessions: VNC and RDP assets as RFB inside the gateway (ARCHITECTURE.md).

``rfb`` frames the protocol (sans-io), ``vnc`` is the gateway's client of a VNC target,
``renderer`` draws an RDP desktop into a private Xvnc (``freerdp`` builds its command line,
``rdpcert`` reads a certificate for an admin to pin), ``upstream`` is the broker's desktop
connector, ``bridge`` relays and records between the browser's noVNC and the target, and
``framebuffer`` decodes pixels when they are wanted (thumbnails, checks, benchmarks). Does
not decide access (the broker does) and serves no HTTP (``gateway.web.desktop`` does).
"""
