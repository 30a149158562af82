"""Code shared by every mushishi daemon and the CLI: config, journal logging, sd_notify, metrics."""
