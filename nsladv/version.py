"""The single place the nsladv version is written."""

__version__ = "0.1.0"
