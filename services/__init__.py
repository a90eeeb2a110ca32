"""BentoML services: Retrieval, Ranking and the Recommender gateway (thin wrappers of recsys)."""
