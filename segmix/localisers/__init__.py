"""Localisers: a foreground map for every tile, fitted with image-level labels only, one driver per
method behind one interface (:class:`~.base.Localiser`: build, fit, maps, save, load, typed
settings).

* ``prototypes`` (:mod:`.prototypes`): superpixel prototypes of stain and texture, named by label
  statistics or the classifier's evidence;
* ``evidence`` (:mod:`.evidence`): a mask head trained against the frozen classifier to keep the
  tile's class when the rest is filled and lose it when the region is;
* ``axis`` (:mod:`.axis`): the main axis of a backbone's dense features inside tiles, its sign
  named by the classifier's evidence.

Their maths lives in :mod:`pseudo_masks` (torch, NumPy and scikit-image only); these drivers add
tile files, the classifier, the saved fit and the pictures.
"""

from typing import Dict, Type

from .axis import AxisLocaliser
from .base import Localiser, fit_or_reuse
from .evidence import EvidenceLocaliser
from .prototypes import PrototypeLocaliser

__all__ = ["LOCALISERS", "Localiser", "fit_or_reuse"]

# method name -> its driver, in the order the docs list them
LOCALISERS: Dict[str, Type[Localiser]] = {
    cls.method: cls for cls in (PrototypeLocaliser, EvidenceLocaliser, AxisLocaliser)}
