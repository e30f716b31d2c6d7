"""Speed benchmarks for captum_salve: each row is a ratio of two timings taken side by side.

Run ``python -m benchmarks`` (``make bench``); see ``benchmarks/README.md``.
"""
