"""prefdistill-workbench: preference distillation (PAD, DCKD/ADPA, PLaD, baselines) on real transformers models.

Submodules are imported lazily by the caller (``from workbench import losses``); importing the package itself
does no network access and loads no model.
"""

__version__ = "0.1.0"
