"""Benchmarks: each prints, as its last line, one JSON object of figures and their ratios to
baselines run alongside. Importing ``gateway`` first installs its filter for asyncssh's DSA
lookups (see gateway/__init__.py), which some benches import before any gateway module."""

import gateway  # noqa: F401
