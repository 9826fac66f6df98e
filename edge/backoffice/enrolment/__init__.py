"""Custody photos → templates → a signed, encrypted bundle (`watchlist build` and the console)."""
