"""rnngen: recurrent generative autoencoders for 28x28 images, with a DVC + MLflow + Optuna
pipeline around them."""

__version__ = "0.1.0"
