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

from dataclasses import dataclass

from ..prompt_pools import L2PPool
from ..prompts import PromptModule
from .config import MethodConfig, Searchable, setting
from .prompt_config import check_layers, check_positive_int, check_prefix_length
from .prompt_method import PromptMethod
from .registry import register_method

__all__ = ["L2P", "L2PConfig"]


@dataclass(frozen=True)
class L2PConfig(MethodConfig):
    """Settings of L2P (``method.l2p``); defaults are the official ones."""

    pool_size: int = setting(30, "prompts in the pool, per prompted block (official 30)", Searchable(int, 1))
    length: int = setting(20, "tokens per prompt; prefix style: half keys, half values (official 20)", Searchable(int, 2))
    top_k: int = setting(5, "prompts chosen per sample by key cosine (official 5)", Searchable(int, 1))
    layers: list[int] = setting([0], "prompted blocks (official shallow L2P: [0])")
    style: str = setting("prefix", "'prefix' (InfLoRA/CODA-Prompt L2P++) or 'prompt' (original L2P input tokens)")
    pull_weight: float = setting(1.0, "weight of the key-pull loss (official 1)", Searchable(float, 0.0))

    def __post_init__(self) -> None:
        s = self.section
        check_positive_int(self.pool_size, f"{s}.pool_size")
        check_positive_int(self.top_k, f"{s}.top_k")
        check_layers(self.layers, f"{s}.layers")
        if self.style not in ("prefix", "prompt"):
            raise ValueError(f"{s}.style must be 'prefix' or 'prompt', got {self.style!r}")
        if self.style == "prefix":
            check_prefix_length(self.length, f"{s}.length")
        else:
            check_positive_int(self.length, f"{s}.length")
            if list(self.layers) != [0]:
                raise ValueError(f"{s}.layers must be [0] with style 'prompt' (tokens at the input), got {list(self.layers)}")
        if self.top_k > self.pool_size:
            raise ValueError(f"{s}.top_k ({self.top_k}) cannot exceed {s}.pool_size ({self.pool_size})")
        if not self.pull_weight >= 0:
            raise ValueError(f"{s}.pull_weight must be >= 0, got {self.pull_weight}")


@register_method
class L2P(PromptMethod):
    """The whole pool trains in every task; per block the top-k prompts by key cosine are prefixed."""

    name = "l2p"
    config_class = L2PConfig
    config: L2PConfig

    def make_prompts(self, embed_dim: int) -> PromptModule:
        c = self.config
        return L2PPool(embed_dim, c.pool_size, c.length, c.top_k, c.layers, c.style, c.pull_weight)
