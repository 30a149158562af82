"""Test and demo tooling: never installed, run from a checkout."""
