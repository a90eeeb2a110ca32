"""recsys: a two-stage recommender (ALS + ScaNN, XGBoost ranking) and its serving platform."""

__version__ = "0.1.0"
