"""Session recordings: formats, the durable encrypted container, storage, verification.

Owns the terminal and desktop recording formats, the chunked AES-256-GCM, hash-chained,
Ed25519-signed container, crash recovery, search and replay. It never imports ``gateway``:
keys, clock and storage locations are passed in. It does not decide who may view a
recording (that is ``rbac``) and does not audit views (that is ``gateway.audit``).
"""
