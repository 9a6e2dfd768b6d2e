"""Worker behaviour, one behaviour per file: outcomes, routing, what handlers receive,
timeouts, progress, leases and rescue, prefetch, wake-up, shutdown, configuration, the
attempts a rescue charges, and what a worker logs."""
