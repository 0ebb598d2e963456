"""medsft: what must be identical across the stages of the Qwen3 medical SFT toolkit (chat format, models,
generation, config, file I/O)."""

import logging

# torchao warns about each CUDA-only kernel it cannot load; its Python optimizers, used here, work regardless
logging.getLogger("torchao").setLevel(logging.ERROR)

from .chat import SYSTEM_PROMPT, build_messages, format_reference, prompt_text, split_output, tokenize_example
from .config import configure, save_config
from .files import MedsftError

__all__ = ["SYSTEM_PROMPT", "build_messages", "format_reference", "prompt_text", "split_output", "tokenize_example",
           "configure", "save_config", "MedsftError"]
