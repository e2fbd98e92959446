"""The one session lifecycle, for every protocol: decide, record, register, connect, end.

``broker`` opens a session (asks ``rbac`` through the authorization service, opens the
recording, registers it with a watchdog, audits) and hands the front end a ``Ticket`` that
already holds what the upstream needs; ``live`` is this process's registry of kill handles,
``store`` the shared live-sessions table and kill mailbox, ``events`` the in-process change
bus. Imports no front end (``gateway.ssh``, ``gateway.web``, ``gateway.desktop``): front
ends call in, never the other way (tests/test_layout.py).
"""
