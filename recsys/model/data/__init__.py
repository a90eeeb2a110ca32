"""Interaction data: schema, synthetic generator, loaders, validation and splits."""
