"""The `recsys` command line: `main` (data, train, evaluate, serve, models) and `retrain`."""
