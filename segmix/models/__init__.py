"""The networks: building them by name with offline weights (:mod:`.factory`), model folders
(:mod:`.folder`), trained models as objects (:mod:`.pretrained`: ``Classifier``, ``Segmenter``),
prediction over images of any size (:mod:`.sliding_window`), TorchScript / ONNX export
(:mod:`.export`) and the float precision they run in (:mod:`.precision`).

Kept free of imports so that ``segmix.models.sliding_window`` (torch only) stays light."""
