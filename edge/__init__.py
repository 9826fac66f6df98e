"""LFR Edge: live facial recognition appliance."""

__version__ = "0.1.0"
