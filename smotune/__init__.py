"""smotune: hyperparameter search for CLIP pre-training (Ray Train, Ray Tune + Optuna, MLflow)."""

__version__ = "0.1.0"
