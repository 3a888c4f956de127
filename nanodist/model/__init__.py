"""Layer 2, the model: GPT-2 as nanoGPT writes it, its shape from the run config, FLOPs, the loss, sampling."""

from nanodist.model.flops import flops_per_token, num_params
from nanodist.model.generate import generate, generate_text
from nanodist.model.gpt import GPT, GPTConfig
from nanodist.model.loss import cross_entropy
from nanodist.model.shape import gpt_config

__all__ = ["GPT", "GPTConfig", "cross_entropy", "flops_per_token", "generate", "generate_text", "gpt_config", "num_params"]
