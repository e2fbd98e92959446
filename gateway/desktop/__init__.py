"""Desktop sessions: RDP and VNC assets as RFB inside the gateway (see ARCHITECTURE.md)."""
