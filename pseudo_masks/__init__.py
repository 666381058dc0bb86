"""Pseudo masks from CAMs: label gating, background models, ignore band, clean-up, evaluation.

Filled in by the pseudo-mask stage; depends on torch, NumPy and scikit-image only.
"""
