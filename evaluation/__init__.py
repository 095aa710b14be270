"""Measuring the service: benchmark datasets, edit-quality metrics, `sola eval` (quality.py) and `sola bench`
(serving.py). Nothing here is on the serving path; it drives the same engine and commit path the service uses."""
