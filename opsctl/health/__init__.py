"""Health sweeps and alerting: the core behind `opsctl health`.

A sweep runs every check concurrently, each under its own timeout, and returns one
result per check with a Nagios status. The loops (continuous, scheduled) feed sweeps to
the alerter, which applies Gatus's flap protection and hands alerts to background sinks.
This package imports nothing heavy at import time: `opsctl.config` imports its settings.
"""
