"""The jobs built on the library: pipelines, the harden and tune jobs, reports and the `nsladv` command.

Jobs may import anything in nsladv; nothing in the library imports jobs
(tests/test_layout.py holds that line).
"""
