"""rutter-monitor: monitoring of Rutter connections."""

__version__ = "0.1.0"
