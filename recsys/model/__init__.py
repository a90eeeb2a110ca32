"""The recommender itself: data, features, candidate sources, ranking, evaluation, stored
artifacts and model health. Imports nothing of serving, ops or rollout (import-linter)."""
