"""segmix: weakly-supervised segmentation of pathology images from image-level labels.

The core ops need torch only and can be imported into any training loop::

    from segmix.shuffle import PatchShuffle, sample_params, apply_params, invert_params, mix_labels
    from segmix.curriculum import ShuffleCurriculum
"""

__version__ = "0.1.0"
