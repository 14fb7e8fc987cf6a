"""PEFT Lab: the helper package of the course. See README.md.

Modules in layers: each imports only from its own layer and the layers above
it, and nothing imports in a circle (tests/test_imports.py reads the imports):

1. overrides, config, files, data, checks, lowrank, plots, style   typed settings from text, run settings, package files, datasets, the exercise checker, plots, the style lexicon
2. devices, tiny, smollm, models, generation, metrics, record, threads  the device and dtype rule, base models, generation, scores, run records, CPU threads
3. adapters, memory, measure                            PEFT methods on a model; memory estimated, then measured (per weight format too)
4. callbacks, train, inference, runtime                 training's callbacks, training; serving speed and merging; what preset 'auto' picks
5. methods, multitask, casestudy                        the sessions' experiments
6. cli, colab, notebooks, grader                        entry points: the command line, Colab, notebooks, grading
"""

import logging
import warnings

__version__ = "0.1.0"

# bitsandbytes on CPU tries an optional hub-hosted kernel package, warns, and falls
# back to its own (slower) path. The fallback is correct, so the warning is noise.
warnings.filterwarnings("ignore", message=".*gemm_4bit_forward from kernels-community.*")
# On a CPU with AVX512-BF16 it says so through logging at import, not through warnings.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: "gemm_4bit_forward from kernels-community" not in record.getMessage())
# peft still calls transformers' old name for activation checkpointing; harmless until v6.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
