import pytest

from lmforge.config import build_run_config, parse_overrides
from lmforge.errors import ConfigError


def test_defaults_preset_file_and_overrides_resolve_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  n_layer: 3\noptim:\n  lr: 0.01\ntrain:\n  batch_size: 5\n")
    cfg = build_run_config(
        preset="tiny", config_file=f, overrides=["--optim.lr", "3e-4", "--model.bias=false"]
    )
    assert cfg.model.n_embd == 128  # from the preset
    assert cfg.model.n_layer == 3  # the file beats the preset
    assert cfg.optim.lr == pytest.approx(3e-4)  # the command line beats the file
    assert cfg.model.bias is False
    assert cfg.train.batch_size == 5


def test_override_values_are_typed():
    cfg = build_run_config(
        overrides={"train.max_minutes": "2.5", "train.max_steps": "1e3", "model.n_kv_head": "none"}
    )
    assert cfg.train.max_minutes == 2.5
    assert cfg.train.max_steps == 1000 and isinstance(cfg.train.max_steps, int)
    assert cfg.model.n_kv_head is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--model.n_layers", "4"], "did you mean 'model.n_layer'"),
        (["--optim.lr", "-1"], "optim.lr must be positive"),
        (["--train.batch_size", "many"], "train.batch_size must be int"),
        (["--model.n_embd", "100", "--model.n_head", "3"], "divisible"),
        (["--optim.schedule", "wavy"], "optim.schedule must be one of"),
        (["--train.precision", "int3"], "train.precision must be one of"),
        (["--foo.bar", "1"], "unknown config key 'foo.bar'"),
        (["--optim.lr"], "needs a value"),
        (["oops"], "unrecognized argument"),
    ],
)
def test_bad_overrides_give_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_run_config(overrides=overrides)


def test_bad_yaml_and_unknown_sections(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_run_config(config_file=bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("modle:\n  n_layer: 2\n")
    with pytest.raises(ConfigError, match="unknown config key 'modle'"):
        build_run_config(config_file=unknown)
    with pytest.raises(ConfigError, match="does not exist"):
        build_run_config(config_file=tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown preset"):
        build_run_config(preset="gigantic")


def test_parse_overrides_accepts_negative_numbers_as_values():
    assert parse_overrides(["--optim.min_lr_ratio", "-0.5"]) == {"optim.min_lr_ratio": "-0.5"}


def test_every_shipped_config_resolves():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        cfg = build_run_config(config_file=path)
        assert cfg.train.max_steps >= 1, path
