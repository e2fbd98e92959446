"""Conduit gateway: everything that meets the outside world.

Owns configuration, the CLI, the database, identities, the session broker, the live-session
registry, the audit log and the protocol front ends (SSH, desktop, web). It uses ``rbac``
for every access decision and ``recordings`` for every recording; neither of those packages
imports this one. It does not contain policy logic of its own.
"""

import warnings

from cryptography.utils import CryptographyDeprecationWarning

__version__ = "0.1.0"

# asyncssh's modules name cryptography's DSA types in annotations at import time, and
# cryptography >= 51 warns on every such lookup (ten lines on each ``conduit`` command)
# although no DSA key is used. Only that warning, raised from asyncssh's own modules, is
# dropped; every other warning stays visible (and is an error in the tests).
warnings.filterwarnings(
    "ignore",
    message="DSA is deprecated",
    category=CryptographyDeprecationWarning,
    module=r"asyncssh(\.|$)",
)
