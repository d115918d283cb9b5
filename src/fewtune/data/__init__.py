"""Labelled images on disk and in memory: decoding, datasets, what predict accepts, leakage."""
