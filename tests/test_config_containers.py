"""Mapping- and list-valued config fields (model.encoder, model.widths) from the command line: JSON/YAML strings,
a mapping override that keeps the keys it does not name, and one clear line for a malformed value."""

import pytest
import yaml

from lmforge.cli.main import main
from lmforge.config import RunConfig, coerce, set_dotted
from lmforge.errors import ConfigError
from lmforge.models.classifier import BackboneWithHead, ClassifierConfig
from tests.tasks.test_classify import sentiment  # noqa: F401 (a fixture)


def test_coerce_parses_json_and_yaml_mappings_and_lists():
    assert coerce('{"n_embd": 16, "bidirectional": false}', dict, "model.encoder") == {
        "n_embd": 16,
        "bidirectional": False,
    }
    assert coerce("{n_hidden: 8}", dict, "model.encoder") == {"n_hidden": 8}
    assert coerce({"n_hidden": 8}, dict, "model.encoder") == {"n_hidden": 8}  # from YAML / Python: as is
    assert coerce("[2, 3]", list, "model.widths") == [2, 3]
    assert coerce("2,3", list, "model.widths") == [2, 3]
    assert coerce("none", dict | None, "model.encoder") is None


@pytest.mark.parametrize(
    "value, message",
    [
        ('{"n_embd": 16', "must be a mapping in JSON/YAML"),
        ("[1, 2]", "must be a mapping, e.g. --model.encoder"),
        ("16", "must be a mapping, e.g. --model.encoder"),
    ],
)
def test_a_malformed_mapping_is_one_clear_error(value, message):
    with pytest.raises(ConfigError, match=message) as info:
        coerce(value, dict, "model.encoder")
    assert "\n" not in str(info.value)


def test_a_mapping_override_keeps_the_keys_it_does_not_name():
    cfg = RunConfig(model=ClassifierConfig(backbone="lstm", encoder={"n_embd": 32, "n_hidden": 16}))
    set_dotted(cfg, "model.encoder", '{"n_hidden": 8}')
    assert cfg.model.encoder == {"n_embd": 32, "n_hidden": 8}


def test_an_unknown_encoder_key_names_the_known_ones():
    cfg = ClassifierConfig(backbone="lstm", encoder={"kind": "bert"}, labels=["a", "b"], vocab_size=10)
    with pytest.raises(
        ConfigError, match="unknown model.encoder key.*kind.*lstm backbone; known: .*n_hidden"
    ):
        BackboneWithHead(cfg)


def test_finetune_takes_the_encoder_sizes_from_the_command_line(sentiment, tmp_path, capsys):  # noqa: F811
    base = [
        "finetune", "--task", "classify", "--model", "lstm", "--train", str(sentiment / "train.tsv"),
        "--text-field", "sentence", "--max-steps", "2", "--quiet",
    ]  # fmt: skip
    sizes = '{"n_embd": 12, "n_hidden": 6, "bidirectional": false}'
    assert main([*base, "--out", str(tmp_path / "run"), "--model.encoder", sizes]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["encoder"] == {"n_embd": 12, "n_hidden": 6, "bidirectional": False}
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "bad"), "--model.encoder", '{"n_embd": 12']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model.encoder must be a mapping in JSON/YAML")
    assert main([*base, "--out", str(tmp_path / "typo"), "--model.encoder", "{n_hiden: 6}"]) == 2
    assert "unknown model.encoder key(s) n_hiden" in capsys.readouterr().err
