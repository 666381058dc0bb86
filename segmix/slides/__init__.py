"""Whole-slide images: reading them (:mod:`.slide`, with :mod:`.stripped_tiff` for plain TIFFs),
finding their tissue (:mod:`.tissue`), predicting them tile by tile into pyramidal masks
(:mod:`.prediction`, :mod:`.masks`) and writing those masks as QuPath GeoJSON (:mod:`.geojson`)."""
