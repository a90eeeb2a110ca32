"""recsys: a two-stage recommender (ALS + ScaNN, XGBoost ranking) and its serving platform."""

from pathlib import Path

__version__ = "0.1.0"

# The project's root: the repository, or the Bento's src directory in the image (slo.yaml and the
# chart are there in both).
REPO_ROOT = Path(__file__).resolve().parent.parent
