"""Authorization: who may do what on which asset, and when.

Owns the Casbin model, schedules and grant windows (pure functions), the access-request
state machine and ``authorize(...) -> Decision``. It never imports ``gateway``: storage,
clock and identities are passed in, so it can be read, tested and reused alone. It does not
authenticate anyone and does not open sessions.
"""
