"""Training: the epoch loop shared by both training stages (:mod:`.trainer`), the config sections
they share and the mixer they describe (:mod:`.settings`), the batch mixers
(:mod:`.mixers`: patch shuffle with the feedback curriculum, CutMix, MixUp) and the metrics log
(:mod:`.log`); the process runtime (devices, ranks, safe checkpoint files) is :mod:`segmix.runtime`.

Kept free of imports so that ``segmix.training.mixers`` stays as light as the kernel it wraps."""
