"""Conduit gateway: everything that meets the outside world.

Owns configuration, the CLI, the database, identities, the session broker, the live-session
registry, the audit log and the protocol front ends (SSH, desktop, web). It uses ``rbac``
for every access decision and ``recordings`` for every recording; neither of those packages
imports this one. It does not contain policy logic of its own.
"""

__version__ = "0.1.0"
