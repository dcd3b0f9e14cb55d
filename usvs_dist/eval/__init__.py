"""Downstream evaluation of exported encoders (plane detection, gaze saliency, retrieval).

Uses config, data and models only: no Ray, no DeepSpeed, no MLflow (the `usvs_dist.evaluate`
entry logs results through `usvs_dist.tracking`).
"""
