"""The chaos soak (issue 14 item 5): the whole stack in a booted systemd under mixed load
while faults are injected at random, with the invariants a user relies on checked at the end.

`.venv/bin/python -m benchmarks.soak --minutes 20` (as root: it boots devtools.sandbox);
tests/system/test_soak.py runs the short form. See benchmarks/soak/README.md.
"""
