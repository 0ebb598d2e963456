"""medsft: what must be identical across the stages of the Qwen3 medical SFT toolkit.

Chat format and tokenization (``chat``), model loading (``models``), generation (``generate``), constants and
overrides (``config``), atomic file I/O (``io``).
"""

import logging

# torchao's import tries its CUDA-only kernels (.so) and warns about each on machines without them; its Python
# optimizers, which this project uses, work regardless
logging.getLogger("torchao").setLevel(logging.ERROR)

from .chat import SYSTEM_PROMPT, build_messages, format_reference, prompt_text, split_output, tokenize_example
from .config import configure, save_config
from .files import MedsftError

__all__ = ["SYSTEM_PROMPT", "build_messages", "format_reference", "prompt_text", "split_output", "tokenize_example",
           "configure", "save_config", "MedsftError"]
