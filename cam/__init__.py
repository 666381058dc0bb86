"""Class activation maps from a trained classifier (CAM, Grad-CAM, Grad-CAM++, LayerCAM, shuffle TTA).

Filled in by the CAM stage; depends on torch only so it can be used from any training loop.
"""
