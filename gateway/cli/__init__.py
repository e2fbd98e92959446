"""``conduit``: every subcommand and ``serve``, on the same services as the API.

``main`` parses (the command tree), ``common`` holds what every command shares (flags,
settings, database runner), one module per command group does the printing (``node``:
init, db, config, serve, demo; ``identity``, ``authz``, ``sessions``, ``recordings``,
``audit``, ``ssh_cert``), and ``serve`` runs a gateway node. Imports flow one way:
``main`` -> command modules -> ``common``; nothing imports ``main`` (tests/test_layout.py).
Decides nothing itself: the identity, authz, sessions and recorder packages do.
"""
