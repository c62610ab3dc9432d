"""The encoder-decoder Transformer: cached decoding, source padding, shared embeddings, checkpoints, info."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from lmforge.checkpoint import load_checkpoint, save_checkpoint
from lmforge.cli.info import describe
from lmforge.cli.main import main
from lmforge.errors import ConfigError
from lmforge.generate.sampling import SamplingParams
from lmforge.generate.transduce import decode_tokens
from lmforge.models.seq2seq import Seq2Seq, Seq2SeqConfig
from lmforge.tokenizers import Tokenizer

VARIANTS = [
    dict(),  # pre-LN, sinusoidal positions, shared embeddings
    dict(norm_position="post"),
    dict(position="learned", share_embeddings=False),
]


def tiny(vocab_size=50, **kw) -> Seq2Seq:
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(
        vocab_size=vocab_size, block_size=24, n_layer=2, n_head=2, n_embd=32, dropout=0.0, **kw
    )
    return Seq2Seq(cfg).eval()


def decoded(model, src, mask, params, generator=None, use_cache=True) -> torch.Tensor:
    return torch.stack(list(decode_tokens(model, src, mask, 2, params, generator, use_cache)), dim=1)


@pytest.mark.parametrize("kw", VARIANTS)
def test_cached_decoding_matches_decoding_the_whole_target(kw):
    model = tiny(**kw)
    src = torch.randint(5, 50, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    tgt = torch.randint(5, 50, (3, 12))
    with torch.no_grad():
        memory = model.encode(src, mask)
        full = model.decode(tgt, memory, mask)
        state = model.start_decoding(memory, mask)
        # A prefix in one call, then one token per step: both paths of the self-attention cache.
        steps = [model.decode_step(tgt[:, :5], state)] + [
            model.decode_step(tgt[:, i : i + 1], state) for i in range(5, 12)
        ]
    assert state.pos == 12
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    for temperature, seed in ((0.0, None), (1.0, 3)):
        params = SamplingParams(max_new_tokens=20, temperature=temperature)
        runs = [
            decoded(
                model, src, mask, params, torch.Generator().manual_seed(seed) if seed else None, use_cache
            )
            for use_cache in (True, False)
        ]
        assert runs[0].shape == (3, 20) and torch.equal(runs[0], runs[1])


def test_source_padding_changes_nothing_for_the_real_tokens():
    model = tiny()
    src = torch.randint(5, 50, (1, 9))
    padded = torch.cat([src, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    mask = torch.tensor([[True] * 9 + [False] * 6])
    tgt = torch.randint(5, 50, (1, 7))
    with torch.no_grad():
        alone = model.encode(src)
        torch.testing.assert_close(model.encode(padded, mask)[:, :9], alone, atol=1e-5, rtol=1e-5)
        # Without the mask the padding leaks into every real token: the check above can fail.
        assert not torch.allclose(model.encode(padded)[:, :9], alone, atol=1e-3)
        torch.testing.assert_close(model(padded, tgt, mask), model(src, tgt), atol=1e-5, rtol=1e-5)
    # A padded row of a batch decodes as it does alone.
    batch = torch.cat([padded, torch.randint(5, 50, (1, 15))])
    batch_mask = torch.cat([mask, torch.ones(1, 15, dtype=torch.bool)])
    params = SamplingParams(max_new_tokens=15, temperature=0.0)
    assert torch.equal(decoded(model, batch, batch_mask, params)[0], decoded(model, src, None, params)[0])


def test_shared_embeddings_are_one_matrix():
    shared, separate = tiny(), tiny(share_embeddings=False)
    assert shared.lm_head.weight is shared.tok_emb.weight and shared.dec_tok_emb is None
    assert separate.dec_tok_emb.weight is not separate.tok_emb.weight is not separate.lm_head.weight
    assert separate.num_params() - shared.num_params() == 2 * 50 * 32


@pytest.mark.parametrize("kw", VARIANTS)
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, kw):
    tok = Tokenizer.train("char", ["alice sees bob at 3 o'clock."])
    model = tiny(vocab_size=tok.vocab_size, **kw)
    save_checkpoint(
        tmp_path / "ckpt", model, tok, {"arch": "seq2seq", "model": dataclasses.asdict(model.config)}
    )
    stored = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert ("lm_head.weight" in stored) == (
        not model.config.share_embeddings
    )  # a shared matrix is stored once
    loaded = load_checkpoint(tmp_path / "ckpt")[0].eval()
    if model.config.share_embeddings:
        assert loaded.lm_head.weight is loaded.tok_emb.weight  # tied again after loading, not two copies
    src, tgt = torch.randint(5, tok.vocab_size, (2, 8)), torch.randint(5, tok.vocab_size, (2, 5))
    mask = torch.tensor([[True] * 8, [True] * 5 + [False] * 3])
    with torch.no_grad():
        assert torch.equal(loaded(src, tgt, mask), model(src, tgt, mask))


def test_config_errors_and_info(capsys):
    for bad in (
        dict(norm_position="middle"),
        dict(position="rope"),
        dict(n_embd=30, n_head=4),
        dict(label_smoothing=1.0),
    ):
        with pytest.raises(ConfigError):
            Seq2Seq(Seq2SeqConfig(**bad))
    info = describe("seq2seq-test")
    assert (
        50_000 < info["params"] < 200_000 and info["flops_per_token"] == 3 * info["forward_flops_per_token"]
    )
    assert main(["info", "seq2seq-small"]) == 0
    out = capsys.readouterr().out
    assert "3 + 3 layers x 256" in out and "encoder-decoder (pre-LN, sinusoidal positions" in out


@pytest.mark.parametrize("kw", VARIANTS)
def test_pairs_padded_to_a_multiple_give_the_same_loss(kw):
    from lmforge.train.objectives import collate_pairs, seq2seq_loss_sum

    g = torch.Generator().manual_seed(5)
    pairs = [
        (torch.randint(5, 50, (n,), generator=g).tolist(), torch.randint(5, 50, (m,), generator=g).tolist())
        for n, m in ((9, 4), (3, 11), (6, 6))
    ]
    exact = collate_pairs(pairs, 2, 0)
    rounded = collate_pairs(pairs, 2, 0, round_to=8, limit=12)
    assert exact[0].shape == (3, 9) and exact[2].shape == (3, 11)
    assert rounded[0].shape == (3, 12) and rounded[2].shape == (3, 12)  # 16 each, held to the limit
    assert collate_pairs(pairs, 2, 0, round_to=8, limit=10)[2].shape == (3, 11)  # never below the longest row
    assert not rounded[1][:, 9:].any() and (rounded[3][:, 11:] == -100).all()  # the new columns are padding
    model = tiny(**kw)
    with torch.no_grad():
        assert torch.allclose(seq2seq_loss_sum(model, rounded), seq2seq_loss_sum(model, exact), rtol=1e-5)
