"""The appliance: camera, camera loop, alert publisher and spool, watchlist store and sync, audit, systemd.
Imports edge.core only; never edge.backoffice."""
