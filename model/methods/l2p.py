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

from ..prompt_pools import L2PPool
from ..prompts import PromptModule
from .config.l2p import L2PConfig
from .prompt_method import PromptMethod
from .registry import register_method

__all__ = ["L2P", "L2PConfig"]


@register_method
class L2P(PromptMethod):
    """The whole pool trains in every task; per block the top-k prompts by key cosine are prefixed."""

    name = "l2p"
    config_class = L2PConfig
    config: L2PConfig

    def make_prompts(self, embed_dim: int) -> PromptModule:
        c = self.config
        return L2PPool(embed_dim, c.pool_size, c.length, c.top_k, c.layers, c.style, c.pull_weight)
