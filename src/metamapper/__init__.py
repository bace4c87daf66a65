"""metamapper: multimodal few-shot learning with a meta-learned mapper between a frozen image
encoder and a frozen language model (Najdenkoska et al., ICLR 2023), and beyond.

The public API (everything else may change)::

    from metamapper import MetaMapper
    model = MetaMapper.from_pretrained("runs/demo")
    adapted = model.adapt(support_images, ["This is a dax.", "This is a blicket."])
    adapted.answer([query_image], question="This is a")

The public names are listed once, in ``__init__.pyi`` beside this file: type checkers read it,
and ``lazy_loader`` imports each name from it on first use, so that ``import metamapper`` (and
``metamapper.config``) stays light: torch loads with the first name that needs it.
"""

from __future__ import annotations

import lazy_loader

from metamapper._version import __version__ as __version__

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
