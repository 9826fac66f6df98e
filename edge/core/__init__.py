"""The shared core: types, configuration, keys and signing, time, model runtime, vision, matching,
the alert and bundle formats. Imports nothing from edge.device, edge.backoffice, edge.lab or edge.cli.main."""
