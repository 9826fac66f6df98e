"""The tamper-evident audit log format and its verifier (device and back office write the same format)."""
