"""Back-office code: runs in the office, never on a device (a device install does not import it)."""
