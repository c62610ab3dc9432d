"""export-hf hands a checkpoint to the ecosystem: generation_config.json, the chat template, a Hub model card, no
local paths, quantized checkpoints dequantized and structures transformers cannot express refused in one line."""

import dataclasses
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.checkpoint import save_checkpoint  # noqa: E402
from lmforge.cli.main import main  # noqa: E402
from lmforge.config import build_run_config  # noqa: E402
from lmforge.errors import ConfigError  # noqa: E402
from lmforge.export.hf import export_hf, import_hf  # noqa: E402
from lmforge.generate.sampling import SamplingParams, generate_tokens  # noqa: E402
from lmforge.lm import load  # noqa: E402
from lmforge.models.registry import build_model  # noqa: E402
from lmforge.tasks.chat.template import ChatTemplate  # noqa: E402
from lmforge.tokenizers import Tokenizer  # noqa: E402

TEXT = ["the quick brown fox jumps over the lazy dog. a stitch in time saves nine. " * 3] * 20
PROMPT = "the lazy fox saves"


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train("bpe", TEXT, vocab_size=300)


def tiny_checkpoint(folder, tokenizer, preset="test", **extra):
    cfg = build_run_config(preset=preset)
    cfg.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    model = build_model(cfg.arch, cfg.model).eval()
    config = {"arch": cfg.arch, "model": dataclasses.asdict(cfg.model), **extra}
    return save_checkpoint(folder, model, tokenizer, config)


def card_header(folder) -> dict:
    import yaml

    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def greedy_ids(lm, prompt_ids, n):
    x = torch.tensor([prompt_ids])
    return torch.cat(list(generate_tokens(lm.model, x, SamplingParams(n, 0.0, None, None, 1.0)))).tolist()


@pytest.mark.parametrize("preset", ["test", "llama-test"])
def test_generate_with_the_written_generation_config_is_lmforges_greedy_decode(tmp_path, tokenizer, preset):
    ckpt = tiny_checkpoint(tmp_path / "ckpt", tokenizer, preset, generation={"max_new_tokens": 20})
    hf_dir = export_hf(ckpt, tmp_path / "hf")
    gen = json.loads((hf_dir / "generation_config.json").read_text())
    assert gen["do_sample"] is False and gen["max_new_tokens"] == 20  # the checkpoint's "generation" key wins
    assert gen["eos_token_id"] == tokenizer.eos_id and gen["pad_token_id"] == tokenizer.pad_id
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    lm = load(ckpt)
    enc = hf_tok(PROMPT, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == lm.prompt_ids(PROMPT)  # the tokenizer adds lmforge's <eos> start
    with torch.no_grad():
        theirs = hf.generate(**enc)[0, enc["input_ids"].shape[1] :].tolist()  # every setting from the file
    assert len(theirs) == 20
    assert theirs == greedy_ids(lm, lm.prompt_ids(PROMPT), 20)
    assert hf_tok.decode(theirs, skip_special_tokens=True) == lm.generate(
        PROMPT, max_new_tokens=20, temperature=0
    )


def test_without_a_generation_key_the_defaults_are_greedy_from_the_tokenizer(tmp_path, tokenizer):
    hf_dir = export_hf(tiny_checkpoint(tmp_path / "ckpt", tokenizer), tmp_path / "hf")
    gen = transformers.GenerationConfig.from_pretrained(hf_dir)
    assert (gen.do_sample, gen.num_beams, gen.max_new_tokens) == (
        False,
        1,
        63,
    )  # 100, within the 64-token context
    assert (gen.bos_token_id, gen.eos_token_id) == (
        tokenizer.eos_id,
        tokenizer.eos_id,
    )  # a prompt starts at <eos>
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)
    with torch.no_grad():  # no prompt at all: generation starts from the start token and stays greedy
        out = hf.generate(max_new_tokens=5)[0].tolist()
    mine = greedy_ids(load(tmp_path / "ckpt"), [tokenizer.eos_id], 5)
    if tokenizer.eos_id in mine:  # transformers stops at the end-of-sequence token, as LM.generate does
        mine = mine[: mine.index(tokenizer.eos_id) + 1]
    assert out == [tokenizer.eos_id, *mine]


def test_a_chat_fine_tunes_template_renders_in_transformers(tmp_path, tokenizer):
    template = ChatTemplate.for_tokenizer(tokenizer)
    ckpt = tiny_checkpoint(
        tmp_path / "chat",
        tokenizer,
        chat_template=template.jinja(),
        data={"task": "chat", "model": str(tmp_path / "base"), "chat": template.to_dict()},
    )
    hf_dir = export_hf(ckpt, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "the fox?"},
        {"role": "assistant", "content": "lazy dog."},
        {"role": "user", "content": "and then?"},
    ]
    rendered = template.render(
        messages, add_generation_prompt=True
    )  # what lmforge chat and serve prompt with
    eos = tokenizer.id_to_token(tokenizer.eos_id)
    assert hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == eos + rendered
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert ids["input_ids"] == [tokenizer.eos_id, *tokenizer.encode(rendered)]  # LM.prompt_ids of it
    assert "chat" in card_header(hf_dir)["tags"]


def test_no_local_path_and_a_hub_model_card(tmp_path, tokenizer):
    # An imported model whose Hub card names a license and a base model: both reach the exported card.
    torch.manual_seed(0)
    src = tmp_path / "src"
    transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=1, n_head=2, n_positions=64
        )
    ).save_pretrained(src)
    tokenizer.save(src / "tokenizer.json")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "_name_or_path": str(src)}))  # a local path
    (src / "README.md").write_text("---\nlicense: mit\nbase_model: someone/tiny-gpt2\n---\n# tiny\n")
    ckpt = import_hf(src, tmp_path / "imported", hf_id=None)
    hf_dir = export_hf(ckpt, tmp_path / "hf")
    for name in ("config.json", "tokenizer_config.json", "generation_config.json", "README.md"):
        text = (hf_dir / name).read_text()
        assert str(tmp_path) not in text and "/tmp" not in text, name
    header = card_header(hf_dir)
    assert header["library_name"] == "transformers" and header["pipeline_tag"] == "text-generation"
    assert header["license"] == "mit" and "lmforge" in header["tags"] and "gpt2" in header["tags"]
    assert "base_model" not in header  # only a local folder was named; an --hf-id import names its Hub id
    from huggingface_hub import ModelCard

    assert ModelCard.load(hf_dir / "README.md").data.license == "mit"  # the Hub's own parser reads it


def test_a_fine_tune_of_a_hub_import_names_it_as_base_model(tmp_path, tokenizer):
    base = tiny_checkpoint(
        tmp_path / "base", tokenizer, source={"hf_id": "someone/tiny-gpt2", "license": "mit"}
    )
    tuned = tiny_checkpoint(tmp_path / "tuned", tokenizer, data={"task": "chat", "model": str(base)})
    header = card_header(export_hf(tuned, tmp_path / "hf"))
    assert header["base_model"] == "someone/tiny-gpt2"
    assert card_header(export_hf(base, tmp_path / "hf-base"))["license"] == "mit"


def test_a_bert_export_adds_cls_and_sep_and_writes_no_generation_config(tmp_path, tokenizer):
    hf_dir = export_hf(tiny_checkpoint(tmp_path / "bert", tokenizer, "bert-test"), tmp_path / "hf")
    assert not (hf_dir / "generation_config.json").exists()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert hf_tok(PROMPT)["input_ids"] == [tokenizer.bos_id, *tokenizer.encode(PROMPT), tokenizer.eos_id]
    assert card_header(hf_dir)["pipeline_tag"] == "fill-mask"


@pytest.mark.parametrize("method", ["int8-weight", "int4-weight"])
def test_a_quantized_checkpoint_exports_dequantized_saying_so(tmp_path, tokenizer, capsys, method):
    from lmforge.compress.quantize import quantize_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "float", tokenizer, "llama-test")
    q = quantize_checkpoint(ckpt, tmp_path / "q", method, group_size=32, include_output=True)
    assert main(["export-hf", str(q), str(tmp_path / "hf")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("note:") and "dequantized" in err[0]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(5, tokenizer.vocab_size, (2, 10))
    with torch.no_grad():
        assert torch.allclose(load(q).model(x), hf(x).logits, atol=1e-4)  # the quantized model's function
    assert "dequantized" in (tmp_path / "hf" / "README.md").read_text()


def test_a_structure_transformers_cannot_express_is_one_line(tmp_path, tokenizer, capsys):
    from lmforge.compress.prune import prune_checkpoint

    pruned = prune_checkpoint(
        tiny_checkpoint(tmp_path / "gpt2", tokenizer), tmp_path / "pruned", "structured", 0.5
    )
    assert main(["export-hf", str(pruned), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pruned" in err[0] and not (tmp_path / "hf").exists()
    magnitude = prune_checkpoint(tmp_path / "gpt2", tmp_path / "sparse", "magnitude", 0.5)
    hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf(magnitude, tmp_path / "hf-sparse"))
    x = torch.randint(5, tokenizer.vocab_size, (1, 8))
    with torch.no_grad():
        assert torch.allclose(load(magnitude).model(x), hf(x).logits, atol=1e-4)
    with pytest.raises(ConfigError, match="no transformers counterpart"):
        export_hf(tiny_checkpoint(tmp_path / "s2s", tokenizer, "seq2seq-test"), tmp_path / "x")
