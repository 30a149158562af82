"""`mushishi bench` and mushishi-bench.service: tokens/s of a fixed prompt set, logged to a
CSV with a regression flag (read by the watchdog and `mushishi status`)."""
