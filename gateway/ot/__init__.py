"""Protocol-aware OT tunnels: a tunnel to a Modbus/TCP port that understands what passes.

``modbus`` is the pure codec (bytes in, frames and requests out; imports nothing from
``gateway``). ``guard`` judges each decoded request against the session's Modbus grants and
write window, answers refusals itself and collects the evidence; ``windows`` stores write
windows. The SSH tunnel (``gateway.ssh.tunnel``) feeds the guard; this package does no I/O
of its own, never decides access (the broker and ``rbac`` do) and never sends a request of
its own to a PLC.
"""
