"""Every method's settings, declared apart from its model code: importing this imports no torch.

``base`` holds what the settings of several methods share (:class:`MethodConfig`,
:class:`LoRAConfig`, :func:`declare_method`); each other module declares one method
(its name, settings and published figures). Adding a method: a settings module here,
imported below, and its model code in ``model/methods/<name>.py``
(:func:`~model.methods.registry.register_method`).
"""

from __future__ import annotations

from . import base
from .base import *  # noqa: F403  what several methods' settings share

# Importing declares the built-in methods.
from . import cl_lora, coda_prompt, dualprompt, frozen, inflora, inflora_ca, joint, l2p, lora_minus, ranpac, sd_lora, seq_lora  # noqa: E402,F401  isort: skip

__all__ = list(base.__all__)
