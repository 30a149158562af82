"""`mushishi status`: what every part of the box says about itself, on one screen.

`gather` reads the sources (gpud and systemd over D-Bus, the router's /status, the CPU
floor's /v1/models, result files, the egress ledger), each concurrently with its own short
timeout; `core` turns the readings into a report (plain data, `--json`) and the screen.
"""
