"""The real xrdp + xorgxrdp target for real-peer tests: ``gateway.demo.xrdp``'s, which the demo
uses as its RDP asset too."""

from gateway.demo.xrdp import (
    RDPTarget,
    free_port,
    missing_reason,
    start_rdp_target,
    write_certificate,
)

__all__ = ["RDPTarget", "free_port", "missing_reason", "start_rdp_target", "write_certificate"]
