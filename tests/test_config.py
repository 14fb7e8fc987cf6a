import pytest
from peftlab.config import PRESETS, ConfigError, RunConfig, load_saved, preset
from peftlab.overrides import parse_overrides

BAD = [
    (dict(method="lorax"), "method"),
    (dict(r=0), "r="),
    (dict(lora_dropout=1.0), "lora_dropout"),
    (dict(method="prefix", gradient_checkpointing=True), "gradient_checkpointing"),
    (dict(method="ptuning_v2", gradient_checkpointing=True), "gradient_checkpointing"),
    (dict(method="full", quantization="4bit"), "quantization"),
    (dict(method="qlora", quantization="8bit"), "quantization"),
    (dict(target_modules={"attention": 8, "mlp": 4}), "rank_pattern"),
    (dict(target_modules=[]), "target_modules"),
    (dict(learning_rate=0), "learning_rate"),
    (dict(num_train_epochs=0, max_steps=-1), "num_train_epochs"),
    (dict(method="adalora", r=8, adalora_init_r=4), "adalora_init_r"),
    (dict(method="adalora", max_steps=10, adalora_tinit=5, adalora_tfinal=5), "adalora_tfinal"),
    (dict(dtype="float8"), "dtype"),
    (dict(rank_pattern={"o_proj": -1}), "rank_pattern"),
    (dict(method="lora", quantization="4bit"), r"write method='qlora'"),
    (dict(save_strategy="steps"), "save_strategy"),
    (dict(r="abc"), r"RunConfig.r='abc': expected an integer"),
    (dict(r=2.5), "expected an integer"),
    (dict(use_rslora="maybe"), "expected true or false"),
    (dict(learning_rate=float("inf")), "expected a number"),
    (dict(seed=True), "expected an integer"),
    (dict(model_name=["a"]), "expected a string"),
]

COERCED = [
    # (field, value as YAML 1.1 or Python may deliver it, value after coercion)
    ("learning_rate", "1e-3", 1e-3),
    ("learning_rate", 1, 1.0),
    ("r", "8", 8),
    ("r", 8.0, 8),
    ("max_steps", "1e2", 100),
    ("use_rslora", "yes", True),
    ("use_rslora", "Off", False),
    ("max_train_samples", None, None),
    ("max_train_samples", "16", 16),
    ("output_dir", 2024, "2024"),
]


@pytest.mark.parametrize("name,value,expected", COERCED)
def test_unambiguous_values_are_coerced_to_the_field_type(name, value, expected):
    got = getattr(RunConfig(**{name: value}), name)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("fields,needle", BAD)
def test_impossible_configs_name_the_field(fields, needle):
    with pytest.raises(ConfigError, match=needle):
        RunConfig(**fields)


def test_every_field_has_help():
    import dataclasses

    for f in dataclasses.fields(RunConfig):
        assert f.metadata.get("help"), f.name


def test_qlora_is_lora_with_a_4bit_flag():
    assert RunConfig(method="qlora").quantization == "4bit"


def test_reference_preset_matches_case_study():
    c = preset("shakespeare-reference")
    assert (c.model_name, c.r, c.lora_alpha) == ("Qwen/Qwen2.5-3B-Instruct", 4, 16)
    assert c.target_modules == ["q_proj", "v_proj", "o_proj"]
    assert (c.per_device_train_batch_size, c.gradient_accumulation_steps) == (4, 2)
    assert (c.learning_rate, c.num_train_epochs) == (2e-4, 5)


def test_yaml_round_trip_with_overrides(tmp_path):
    c = RunConfig(r=16, target_modules="q_proj, k_proj")
    assert c.target_modules == ["q_proj", "k_proj"]
    path = c.save(tmp_path / "c.yaml")
    back = RunConfig.from_yaml(path, ["r=32", "target_modules=all-linear", "use_rslora=true"])
    assert (back.r, back.target_modules, back.use_rslora) == (32, "all-linear", True)
    assert load_saved(path) == c


def test_unknown_fields_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown field"):
        RunConfig.from_yaml("shakespeare-tiny", ["rank=8"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("r: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        RunConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="no such config"):
        RunConfig.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["r8"])


def test_presets_are_valid():
    for name in PRESETS:
        preset(name)
