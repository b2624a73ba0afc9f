"""Scoring options the tests use."""

# Small, quick, deterministic scoring settings for the real engine on CPU.
FAST_OPTIONS = {"passes": 2, "bootstrap_resamples": 5, "top_k": 3, "batch_size": 4, "device": "cpu", "seed": 7}
# Many small batches: time for a fault test to strike mid-job.
SLOW = {**FAST_OPTIONS, "batch_size": 2}
