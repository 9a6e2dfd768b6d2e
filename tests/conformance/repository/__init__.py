"""Repository semantics, one behaviour per file: enqueueing, deduplication, claiming,
progress, outcomes, leases and rescue, cancel and retry, cleanup, errors, construction."""
