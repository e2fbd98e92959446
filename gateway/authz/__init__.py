"""Authorization glue: assets, zones, grants and access requests stored in the database,
loaded into ``rbac``'s policy index, changed through one service that emits change events.

Policy lines (p, g2 and role nesting g) are persisted through casbin-async-sqlalchemy-adapter
in ``casbin_rule``; each grant's time limits and provenance live in ``grants``; user -> role
and user -> organisation membership comes from the identity tables. The decision itself is
``rbac``'s; this package never decides on its own.
"""
