"""Desktop sessions (VNC, and RDP through a private renderer): everything speaks RFB here."""
