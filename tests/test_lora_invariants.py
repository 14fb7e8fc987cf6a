"""The LoRA invariants, each named and tested on the tiny model."""

import pytest
import torch
from peftlab import adapters
from peftlab.config import RunConfig

CFG = RunConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj"])


def _inputs(tokenizer):
    enc = tokenizer(["Where are you going so early?", "Give me thy hand."], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _perturb_b(model):
    # B starts at zero; give it values so merge and save/load are tested on a real update.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_noop_at_init(tiny_model, tokenizer):
    ids, mask = _inputs(tokenizer)
    base = tiny_model(input_ids=ids, attention_mask=mask).logits.clone()
    model = adapters.attach(tiny_model, CFG)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, base)


def test_only_adapter_params_trainable(tiny_model):
    model = adapters.attach(tiny_model, CFG)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    counts = adapters.count_parameters(model)
    # per layer: q 4*(64+64) + v 4*(64+32) + o 4*(64+64); two layers
    assert counts.trainable == sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) == 2 * (512 + 384 + 512)


def test_frozen_base_unchanged_after_step(tiny_model, tokenizer):
    model = adapters.attach(tiny_model, CFG)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    ids, mask = _inputs(tokenizer)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any(not torch.equal(p, lora_b[n]) for n, p in model.named_parameters() if "lora_B" in n)


def test_merge_equals_w_plus_scaled_ba(tiny_model, tokenizer):
    model = adapters.attach(tiny_model, CFG)
    _perturb_b(model)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    W = layer.base_layer.weight.detach().clone()
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = W + (CFG.lora_alpha / CFG.r) * B @ A  # (d_out, d_in)
    ids, mask = _inputs(tokenizer)
    unmerged = model(input_ids=ids, attention_mask=mask).logits
    merged_model = adapters.merge(model)
    merged_w = merged_model.model.layers[0].self_attn.q_proj.weight
    torch.testing.assert_close(merged_w, expected)
    torch.testing.assert_close(merged_model(input_ids=ids, attention_mask=mask).logits, unmerged, atol=1e-5, rtol=1e-5)


def test_rslora_scaling(tiny_model):
    model = adapters.attach(tiny_model, RunConfig(r=4, lora_alpha=16, use_rslora=True))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == 16 / 4**0.5


def test_checkpoint_holds_only_adapter_keys_and_reloads(tiny_model, tokenizer, tiny_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = adapters.attach(tiny_model, CFG)
    _perturb_b(model)
    ids, mask = _inputs(tokenizer)
    before = model(input_ids=ids, attention_mask=mask).logits
    path = adapters.save_adapter(model, tmp_path / "ad")
    keys = load_file(path / "adapter_model.safetensors").keys()
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)
    fresh = AutoModelForCausalLM.from_pretrained(tiny_dir)
    loaded = adapters.load_adapter(fresh, path)
    assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits, before)


def test_rank_pattern_applies_where_asked(tiny_model):
    cfg = RunConfig(r=4, target_modules=["q_proj", "v_proj", "o_proj"], rank_pattern={"o_proj": 8})
    model = adapters.attach(tiny_model, cfg)
    ranks = adapters.adapter_modules(model)
    assert {n.split(".")[-1]: r for n, r in ranks.items()} == {"q_proj": 4, "v_proj": 4, "o_proj": 8}


def test_multiple_adapters_switch_and_combine(tiny_model, tokenizer, tmp_path):
    ids, mask = _inputs(tokenizer)
    model = adapters.attach(tiny_model, CFG)
    _perturb_b(model)
    adapters.save_adapter(model, tmp_path / "one")
    out_one = model(input_ids=ids, attention_mask=mask).logits.detach()
    torch.manual_seed(5)
    _perturb_b(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(-1)
    adapters.save_adapter(model, tmp_path / "two")
    out_two = model(input_ids=ids, attention_mask=mask).logits.detach()
    adapters.load_adapter(model, tmp_path / "one", adapter_name="one")
    adapters.load_adapter(model, tmp_path / "two", adapter_name="two")
    model.set_adapter("one")
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, out_one)
    model.set_adapter("two")
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, out_two)
    # B_two = -B_one, so an equal-weight linear combination cancels: back to the base model.
    adapters.combine(model, ["one", "two"], [1.0, 1.0], "mix", combination_type="linear")
    with model.disable_adapter():
        base = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, base, atol=1e-5, rtol=1e-5)


def test_combine_rejects_unequal_ranks_for_linear(tiny_model, tmp_path):
    import pytest

    model = adapters.attach(tiny_model, CFG)
    adapters.save_adapter(model, tmp_path / "r4")
    from peftlab.config import with_overrides

    other = adapters.attach(tiny_model.__class__.from_pretrained(model.base_model.model.name_or_path), with_overrides(CFG, r=8))
    adapters.save_adapter(other, tmp_path / "r8")
    adapters.load_adapter(model, tmp_path / "r8", adapter_name="r8")
    with pytest.raises(adapters.AdapterError, match="equal ranks"):
        adapters.combine(model, ["default", "r8"], [0.5, 0.5], "mix")


@pytest.mark.parametrize(
    "targets,needle",
    [(["q_projj"], "no module of Qwen2ForCausalLM is named 'q_projj'"),
     (["q_proj", "mlp"], "'mlp' names Qwen2MLP, not a linear layer")],
)
def test_target_modules_are_checked_against_the_model(tiny_model, targets, needle):
    from peftlab.config import ConfigError

    with pytest.raises(ConfigError, match=needle) as exc:
        adapters.attach(tiny_model, RunConfig(target_modules=targets))
    assert "linear layers are down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in str(exc.value)
    assert not hasattr(tiny_model, "peft_config")  # rejected before peft touched the model
