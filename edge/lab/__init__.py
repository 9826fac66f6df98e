"""Measurement and the local rig: eval, calibration, cohorts, benchmarks, the demo. Never imported by `run`."""
