"""The watchlist as both sides know it: the bundle format, the in-memory list, matching, the policy."""
