"""Robustness: corruptions, CCTV conditions, occlusion, and the benchmark that scores them."""
