import pytest
import torch
from peftlab import devices, models, tiny
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
    assert model.dtype == devices.pick_dtype(torch.device("cpu")) and model.device.type == "cpu"
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
    native = devices.cpu_bf16_native()
    assert devices.pick_dtype(cpu) == (torch.bfloat16 if native else torch.float32)
    assert devices.pick_dtype(cpu, "bfloat16") == torch.bfloat16
    assert devices.pick_dtype(cpu, "float32") == torch.float32
    if not torch.cuda.is_available():
        assert devices.pick_device("auto").type in ("cpu", "mps")
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            devices.pick_device("cuda")


DTYPE_RULE = [
    # (requested, device, bf16 supported, resolved)
    ("auto", "cpu", False, "float32"),  # AVX2-only: torch would emulate bf16, 20-40x slower
    ("auto", "cpu", True, "bfloat16"),  # AVX512-BF16 / AMX / Arm BF16
    ("auto", "cuda", True, "bfloat16"),
    ("auto", "cuda", False, "float32"),  # a GPU without bf16 (T4): float32, never float16 (Qwen2.5 overflows)
    ("auto", "mps", True, "bfloat16"),  # macOS 14+
    ("auto", "mps", False, "float32"),  # never float16 on MPS either
    ("float16", "cpu", None, "float16"),  # an explicit choice stands
]


@pytest.mark.parametrize("requested,device,bf16,resolved", DTYPE_RULE)
def test_auto_dtype_rule(requested, device, bf16, resolved):
    assert devices.resolve_dtype(requested, device, bf16) == resolved


X86 = {"architecture": "x86_64"}
CPU_KINDS = [
    # (torch's dispatch capability, feature flags, environment, OS, computes bf16 natively)
    ("AVX2", X86, {}, "Linux", False),  # a laptop since Intel's 12th generation, AMD before Zen 4
    ("AVX2", X86 | {"avx512_bf16": True}, {}, "Linux", False),  # torch dispatches AVX2 kernels here
    ("AVX512", X86 | {"avx512_bf16": False, "amx_bf16": False}, {}, "Linux", False),  # Skylake-X, Ice Lake
    ("AVX512", X86 | {"avx512_bf16": True}, {}, "Linux", True),  # Cooper Lake, Zen 4
    ("AVX512", X86 | {"amx_bf16": True}, {}, "Linux", True),  # Sapphire Rapids and newer
    ("AVX512", X86 | {"avx512_bf16": True}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "Linux", False),  # oneDNN capped
    ("AVX512", X86 | {"amx_bf16": True}, {"ONEDNN_MAX_CPU_ISA": "avx512_core_amx"}, "Linux", True),
    ("DEFAULT", {"architecture": "aarch64", "bf16": True}, {}, "Linux", True),  # Graviton 3, Neoverse V1/N2
    ("DEFAULT", {"architecture": "aarch64", "bf16": False}, {}, "Linux", False),  # Graviton 2
    ("DEFAULT", {"architecture": "arm64", "bf16": True}, {}, "Darwin", False),  # Apple: no bf16 matrix kernel
]


@pytest.mark.parametrize("capability,features,env,system,native", CPU_KINDS)
def test_cpu_bf16_native(capability, features, env, system, native):
    assert devices.cpu_bf16_native(features, capability, env, system) is native


@pytest.mark.parametrize("capability,bf16_flag,amx_flag,resolved", [
    ("AVX2", True, True, "float32"),
    ("AVX512", False, False, "float32"),
    ("AVX512", True, False, "bfloat16"),
    ("AVX512", False, True, "bfloat16"),
])
def test_cpu_preset_asks_auto_and_the_cpu_decides(monkeypatch, capability, bf16_flag, amx_flag, resolved):
    """The case study's CPU preset pins no dtype: an AVX2-only CPU trains it in float32."""
    from peftlab.config import preset

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(devices, "cpu_features",
                        lambda: {"architecture": "x86_64", "avx512_bf16": bf16_flag, "amx_bf16": amx_flag})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    cfg = preset("shakespeare-cpu")
    assert cfg.dtype == "auto"
    assert devices.run_dtypes(cfg, "cpu") == (resolved, resolved)
    assert devices.pick_dtype(torch.device("cpu"), cfg.dtype) == getattr(torch, resolved)


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"), reason="an x86 CPU")
def test_a_cpu_held_to_avx2_trains_in_float32():
    """Not a patch: a fresh process with torch, oneDNN and MKL held to AVX2, as on most laptops."""
    import os
    import subprocess
    import sys

    code = ("import torch; from peftlab import config, devices; "
            "print(torch.backends.cpu.get_cpu_capability(), devices.run_dtypes(config.preset('shakespeare-cpu'), 'cpu'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=os.environ | devices.AVX2_ONLY_ENV).stdout
    assert out.strip() == "AVX2 ('float32', 'float32')"


def test_mps_never_gets_float16(monkeypatch):
    monkeypatch.setattr(devices, "mps_bf16", lambda: False)
    assert devices.resolve_dtype("auto", "mps") == "float32"
    monkeypatch.setattr(devices, "mps_bf16", lambda: True)
    assert devices.resolve_dtype("auto", "mps") == "bfloat16"


def test_explicit_bf16_on_an_emulating_cpu_says_the_cost_once_and_runs(monkeypatch, capsys, caplog):
    from peftlab.config import RunConfig as Config

    monkeypatch.setattr(devices, "cpu_bf16_native", lambda *a, **k: False)
    monkeypatch.setattr(devices, "bf16_cost", lambda *a, **k: 61.0)
    lines = []
    cfg = Config(model_name="tiny-qwen2", dtype="bfloat16")
    with caplog.at_level("WARNING", logger="peftlab.devices"):
        model = models.load_model(cfg)
    lines = [r.getMessage() for r in caplog.records if "bfloat16" in r.getMessage()]
    assert len(lines) == 1
    assert "61" in lines[0] and "slower" in lines[0] and "dtype='auto'" in lines[0] and "\n" not in lines[0]
    assert next(model.parameters()).dtype == torch.bfloat16  # it runs as asked
    # Nothing to say where bf16 is native, for float32, or on a GPU.
    assert devices.warn_if_slow_dtype("float32", "cpu") is None
    assert devices.warn_if_slow_dtype("bfloat16", "cuda") is None
    monkeypatch.setattr(devices, "cpu_bf16_native", lambda *a, **k: True)
    assert devices.warn_if_slow_dtype("bfloat16", "cpu") is None


def test_bf16_cost_is_a_ratio_of_two_real_products():
    cost = devices.bf16_cost(size=64, repeats=1)
    assert cost > 0 and cost == cost  # finite and positive; its size depends on the CPU, not asserted


def test_records_name_the_cpu_kind():
    from peftlab.record import hardware

    hw = hardware()
    assert hw["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert hw["cpu_bf16_native"] is devices.cpu_bf16_native()
    assert hw["cpu_kind"] == devices.cpu_kind() and hw["cpu_kind"].startswith(("AVX", "DEFAULT", "Arm", "ZVECTOR", "SVE", "NEON"))


def test_every_user_of_the_dtype_rule_agrees():
    from peftlab.memory import estimate

    qlora = RunConfig(method="qlora", compute_dtype="auto")
    assert devices.run_dtypes(qlora, "cuda", bf16_supported=True) == ("bfloat16", "bfloat16")
    assert devices.run_dtypes(RunConfig(compute_dtype="float16"), "cpu", bf16_supported=False) == ("float32", "float16")
    # The estimator predicts for a bf16 GPU on "cuda" and, on "cpu", for what this CPU computes natively
    # (or the CPU kind it is told): 2 bytes per weight in bf16, 4 in float32.
    on_gpu = estimate("Qwen/Qwen2.5-0.5B", RunConfig(method="full"), seq_len=8, device="cuda")
    on_cpu = estimate("Qwen/Qwen2.5-0.5B", RunConfig(method="full"), seq_len=8, device="cpu", bf16=False)
    assert on_cpu.base_weights == 2 * on_gpu.base_weights == 4 * 494_032_768
    here = estimate("Qwen/Qwen2.5-0.5B", RunConfig(method="full"), seq_len=8, device="cpu")
    assert here.base_weights == (2 if devices.cpu_bf16_native() else 4) * 494_032_768
    # A GPU without bf16 (T4) gets float32 from 'auto', as devices.gpu_dtype loads it there.
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


def test_importing_the_course_keeps_bitsandbytes_fallback_notice_quiet():
    """bitsandbytes logs at import, on AVX512-BF16 CPUs, that an optional hub kernel is missing; its own
    fallback is correct, so after `import peftlab` nothing of it reaches the user's output."""
    import subprocess
    import sys

    pytest.importorskip("bitsandbytes")
    out = subprocess.run([sys.executable, "-c", "import peftlab, bitsandbytes, bitsandbytes.functional"],
                         capture_output=True, text=True, check=True)
    assert "kernels-community" not in out.stdout + out.stderr


def test_layer_shapes_on_meta_follow_grouped_query_attention():
    """Exercise 07's stand-in for linear_shapes: k_proj and v_proj are num_key_value_heads heads wide."""
    shapes = models.layer_shapes_on_meta("Qwen/Qwen2.5-3B-Instruct")
    assert shapes == {"q_proj": (2048, 2048), "k_proj": (256, 2048), "v_proj": (256, 2048), "o_proj": (2048, 2048),
                      "gate_proj": (11008, 2048), "up_proj": (11008, 2048), "down_proj": (2048, 11008)}
    shapes["q_proj"] = (0, 0)  # a caller's change does not reach the cache
    assert models.layer_shapes_on_meta("Qwen/Qwen2.5-3B-Instruct")["q_proj"] == (2048, 2048)
