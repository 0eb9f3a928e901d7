"""Runnable hardening jobs: each module defines `PIPELINE = nsladv.Pipeline(...)`.

Copy one to harden your own model: change the dataset, `build_model`, the
threat model and the schedule, then `nsladv harden path/to/your_pipeline.py`.
"""
