"""The networks: building them by name with offline weights (:mod:`.factory`), model folders
(:mod:`.folder`), trained models as objects (:mod:`.pretrained`: ``Classifier``, ``Segmenter``),
TorchScript / ONNX export (:mod:`.export`) and the float precision they run in
(:mod:`.precision`)."""
