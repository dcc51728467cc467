"""Grading models: quality metrics, evaluation of registered versions and the promotion gate."""
