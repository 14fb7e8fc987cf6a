"""PEFT Lab: the helper package of the course. See README.md.

Modules, in import order: config -> data, models, tiny -> adapters -> train
-> metrics, memory, record -> cli.
"""

import warnings

__version__ = "0.1.0"

# bitsandbytes on CPU tries an optional hub-hosted kernel package, warns, and falls
# back to its own (slower) path. The fallback is correct, so the warning is noise.
warnings.filterwarnings("ignore", message=".*gemm_4bit_forward from kernels-community.*")
# peft still calls transformers' old name for activation checkpointing; harmless until v6.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
