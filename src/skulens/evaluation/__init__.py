"""Evaluation: batched inference over a split, metrics, and reports."""
