"""The review console: ingest verified alerts into a database, and a web UI where officers decide.

Needs the `backoffice` extra (`pip install 'lfr-edge[backoffice]'`); the device never imports it.
"""
