"""Prefect flows: retraining behind the data-quality gate, and drift checks on the service's requests."""
