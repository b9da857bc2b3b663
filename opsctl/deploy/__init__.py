"""Deploying the worker: one blue-green algorithm above small platform drivers."""
