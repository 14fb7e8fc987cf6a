import pytest
import torch
from peftlab import models, tiny
from peftlab.config import RunConfig


def test_tiny_model_is_qwen2_with_chatml(tiny_dir, tokenizer):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_dir)
    assert config.model_type == "qwen2" and config.num_key_value_heads < config.num_attention_heads
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    # byte-level BPE: any text round-trips, even outside the training corpus
    for s in ["naïve café — 東京 🙂", "  two  spaces\n\ttab"]:
        assert tokenizer.decode(tokenizer(s)["input_ids"]) == s


def test_tiny_build_is_deterministic(tiny_dir):
    tok = tiny.build_tokenizer()
    a, b = tiny.build_model(tok, seed=0), tiny.build_model(tok, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert tok.get_vocab() == tiny.build_tokenizer().get_vocab()


def test_tiny_name_loads_through_from_pretrained(tiny_dir):
    model, tokenizer = models.load(RunConfig(model_name="tiny-qwen2", device="cpu"))
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert type(model).__name__ == "Qwen2ForCausalLM"


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-3B-Instruct", "no-such-org/no-such-model", "/no/such/dir"])
def test_unavailable_model_gives_one_clear_error(name):
    with pytest.raises(models.ModelNotAvailableError) as info:
        models.load_tokenizer(name)
    msg = str(info.value)
    assert name in msg and "tiny-qwen2" in msg and "local path" in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_device_and_dtype_choice():
    cpu = torch.device("cpu")
    assert models.pick_dtype(cpu) == torch.float32
    assert models.pick_dtype(cpu, "bfloat16") == torch.bfloat16
    if not torch.cuda.is_available():
        assert models.pick_device("auto").type in ("cpu", "mps")
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            models.pick_device("cuda")


DTYPE_RULE = [
    # (requested, device, bf16 supported, resolved)
    ("auto", "cpu", None, "float32"),
    ("auto", "cuda", True, "bfloat16"),
    ("auto", "cuda", False, "float32"),  # a GPU without bf16 (T4): float32, never float16 (Qwen2.5 overflows)
    ("auto", "mps", None, "float16"),
    ("float16", "cpu", None, "float16"),
]


@pytest.mark.parametrize("requested,device,bf16,resolved", DTYPE_RULE)
def test_auto_dtype_rule(requested, device, bf16, resolved):
    assert models.resolve_dtype(requested, device, bf16) == resolved


def test_every_user_of_the_dtype_rule_agrees():
    from peftlab.memory import estimate

    qlora = RunConfig(method="qlora", compute_dtype="auto")
    assert models.run_dtypes(qlora, "cuda", bf16_supported=True) == ("bfloat16", "bfloat16")
    assert models.run_dtypes(RunConfig(compute_dtype="float16"), "cpu") == ("float32", "float16")
    # The estimator predicts for a bf16 GPU on "cuda" and for float32 on "cpu": 2 and 4 bytes per weight.
    on_gpu = estimate("Qwen/Qwen2.5-0.5B", RunConfig(method="full"), seq_len=8, device="cuda")
    on_cpu = estimate("Qwen/Qwen2.5-0.5B", RunConfig(method="full"), seq_len=8, device="cpu")
    assert on_cpu.base_weights == 2 * on_gpu.base_weights == 4 * 494_032_768
    # A GPU without bf16 (T4) gets float32 from 'auto', as models.gpu_dtype loads it there.
    on_t4 = estimate("Qwen/Qwen2.5-0.5B", RunConfig(method="full"), seq_len=8, device="cuda", bf16=False)
    assert on_t4.base_weights == on_cpu.base_weights and on_t4.runtime == 0


def test_quantization_config_uses_transformers5_api():
    q = models.quantization_config(RunConfig(method="qlora", double_quant=True), torch.bfloat16)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert models.quantization_config(RunConfig(), torch.float32) is None
    assert models.quantization_config(RunConfig(quantization="8bit"), torch.float32).load_in_8bit


def test_qwen25_licences_are_stated():
    assert "non-commercial" in models.QWEN25_LICENSE["3B"]
    assert models.QWEN25_LICENSE["7B"] == "Apache-2.0"
