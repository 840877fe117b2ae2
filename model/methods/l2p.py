"""L2P (Wang et al., CVPR 2022) as the InfLoRA repository runs it: a keyed prompt pool, top-k by cosine.

Choices and where they come from (``liangyanshuo/InfLoRA`` at ``e08b00e``; defaults
from ``GT-RIPL/CODA-Prompt``, since InfLoRA ships no config for its prompt methods;
see ``docs/prompt_methods.md``):

* prompt module: ``models/zoo.py`` ``L2P`` (subclass of ``DualPrompt`` with
  ``task_id_bootstrap = False``, ``_init_smart``: ``top_k = 5``, shallow layers
  ``[0]`` when ``prompt_param[2] <= 0``) — :class:`~model.prompt_pools.L2PPool`,
  prefix tuning by default (CODA-Prompt's "L2P++"; ``style: prompt`` gives the
  original L2P's input tokens);
* pool size 30, prompt length 20: CODA-Prompt ``experiments/{imagenet-r,cifar-100}.sh``
  ``--prompt_param 30 20 -1``;
* trainable: the whole pool and the task's head, ``methods/sprompt_l2p.py``
  ``_train`` (``"prompt_pool" in name``, ``classifier_pool.{t}``);
* loss: ``sprompt_l2p.py`` ``train_function``: ``cross_entropy + prompt_loss.sum()``
  (the key pull, weight ``pull_weight``, official 1), added here through
  :class:`~model.methods.prompt_method.PromptLossHooks`;
* optimizer: ``sprompt_l2p.py`` ``_train``: Adam ``betas=(0.9, 0.999)``, lr 1e-3
  (CODA-Prompt ``configs/*_prompt.yaml``), weight decay 0; the
  ``scheduler.step()`` of ``train_function`` is commented out, so the official L2P
  trains at a **constant** rate: ``train.scheduler: constant`` in its configs;
* test: ``models/sinet_l2p.py`` ``SiNet.interface`` selects as in training.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from ..prompt_pools import L2PPool
from ..prompts import PromptModule
from .config import MethodConfig, setting
from .prompt_config import Layers
from .prompt_method import PromptMethod
from .published import sd_lora_paper
from .registry import register_method

__all__ = ["L2P", "L2PConfig"]


class L2PConfig(MethodConfig):
    """Settings of L2P; defaults are the official ones."""

    pool_size: int = setting(30, "prompts in the pool, per prompted block (official 30)", search=True, ge=1)
    length: int = setting(20, "tokens per prompt; prefix style: half keys, half values (official 20)", search=True, ge=2)
    top_k: int = setting(5, "prompts chosen per sample by key cosine (official 5)", search=True, ge=1)
    layers: Layers = setting([0], "prompted blocks (official shallow L2P: [0])")
    style: Literal["prefix", "prompt"] = setting("prefix", "'prefix' (InfLoRA/CODA-Prompt L2P++) or 'prompt' (original L2P input tokens)")
    pull_weight: float = setting(1.0, "weight of the key-pull loss (official 1)", search=True, ge=0.0)

    @model_validator(mode="after")
    def _consistent(self) -> "L2PConfig":
        if self.style == "prefix" and self.length % 2:
            raise ValueError(f"length must be an even integer >= 2 with style 'prefix' (half keys, half values), got {self.length}")
        if self.style == "prompt" and list(self.layers) != [0]:
            raise ValueError(f"layers must be [0] with style 'prompt' (tokens at the input), got {list(self.layers)}")
        if self.top_k > self.pool_size:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed pool_size ({self.pool_size})")
        return self


@register_method
class L2P(PromptMethod):
    """The whole pool trains in every task; per block the top-k prompts by key cosine are prefixed."""

    name = "l2p"
    config_class = L2PConfig
    config: L2PConfig
    # SD-LoRA's paper (Wu et al., ICLR 2025), Tables 2-3, on SD-LoRA's protocol; the InfLoRA paper's
    # Table 1 row is left out: no copy of that table could be checked from here.
    published = sd_lora_paper({
        ("imagenet_r", 5): ("73.04 ± 0.71", "76.94 ± 0.41"),
        ("imagenet_r", 10): ("71.26 ± 0.44", "76.13 ± 0.46"),
        ("imagenet_r", 20): ("68.97 ± 0.51", "74.16 ± 0.32"),
        ("imagenet_a", 10): ("42.94 ± 1.27", "51.40 ± 1.95"),
        ("domainnet", 5): ("70.26 ± 0.25", "75.83 ± 0.98"),
    })  # fmt: skip

    def make_prompts(self, embed_dim: int) -> PromptModule:
        c = self.config
        return L2PPool(embed_dim, c.pool_size, c.length, c.top_k, c.layers, c.style, c.pull_weight)
