"""Evaluation: segmentation metrics and the `xkd-eval` command."""
