"""mushishi daemons: one package per daemon, each a thin shell around a pure core."""
