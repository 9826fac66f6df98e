"""What the device records: the audit service, the deployment record, `wipe --all`."""
