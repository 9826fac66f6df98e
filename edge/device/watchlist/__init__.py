"""The device's installed watchlist (encrypted at rest) and its automatic sync and signed commands."""
