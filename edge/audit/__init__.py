"""Accountability: the tamper-evident audit log and the deployment records built from it.

log.py (append-only hash-chained JSON lines, signed checkpoints, segments), verify.py (`audit
verify`), service.py (records the service writes and hooks for the other components),
deployment.py (deployment records), runtime.py (ServiceAudit, what the service holds), wipe.py
(`wipe --all`). docs/PRIVACY.md documents the formats and the guarantees.
"""
