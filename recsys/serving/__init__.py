"""The serving library: settings, the gateway's pipeline (timeouts, fallbacks, breakers),
re-ranking, model loading, batching and test faults. Free of BentoML: services/ are the thin
BentoML layer over it (import-linter)."""
