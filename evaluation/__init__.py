"""Evaluation harnesses (metrics and tasks)."""
