"""Load tests with SLO gates: Locust's own runners and stats, driven as a library.

profiles.py reads loadtests/profiles.yaml, slo.py turns "p95<2000ms,error_rate<5%" into
gates, runner.py runs Locust in-process (or as a master with worker processes), reports.py
writes Locust's HTML and CSV reports and a JUnit file, history.py keeps every run's summary
for `list` and `compare`, manifests.py renders the in-cluster Locust deployment.
Nothing here imports locust at module level, so `opsctl --help` stays fast.
"""
