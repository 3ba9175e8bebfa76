"""Evaluation: the runner over evaluators and ensembles, metrics, and the report (table and JSON)."""
