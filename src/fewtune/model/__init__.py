"""A trained classifier: the head (strategy, calibration, unknown threshold), the classifier, training."""
