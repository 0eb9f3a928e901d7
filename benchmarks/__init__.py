"""Benchmarks: scripts that print figures and ratios measured in one run. Run them as `python -m benchmarks.<name>`."""
