"""Export a trained model: a Hugging Face transformers directory (MarianMT for post-norm models),
CTranslate2's conversion of it, and an Argos Translate package of that (what LibreTranslate serves).

The exported vocabulary follows Marian's order, padding last: nmt id i is exported id i - 1 and
padding (nmt id 0) becomes the last id. Padding is the decoder start and its embedding row is zero,
so CTranslate2's MarianMT converter (which drops the last id and starts from a zero vector) gives
the same model. Needs the optional `transformers` package (`pip install nmt[export]`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from nmt import __version__, atomic
from nmt.errors import NMTError
from nmt.importing.names import hf_name
from nmt.languages import language_name
from nmt.model import sinusoidal_table, split_projections
from nmt.translator import Translator
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID


def exported_id(token: int, vocab_size: int) -> int:
    """The id of nmt token `token` in the exported (padding-last) vocabulary."""
    return (token - 1) % vocab_size


def nmt_id(token: int, vocab_size: int) -> int:
    """The nmt id of exported token `token` (inverse of `exported_id`)."""
    return (token + 1) % vocab_size


def _unsupported(translator: Translator) -> str | None:
    m = translator.config.model
    if m.norm_first and m.imported_from:
        return (f"it was imported from {m.imported_from}, a pre-norm (M2M100 / NLLB) model, which MarianMT cannot "
                "hold; that directory is the Hugging Face form of its weights before fine-tuning")
    if m.norm_first:
        return ("pre-norm models (model.norm_first: true) have no exact Hugging Face counterpart here; "
                "train with model.norm_first: false to export to MarianMT")
    if translator.model.start_id != PAD_ID:
        return ("the decoder starts from BOS (model.decoder_start: bos); MarianMT starts "
                "from the zero padding embedding: retrain with model.decoder_start: pad")
    if m.positions != "sinusoidal":
        return "learned positions (model.positions: learned) do not map onto MarianMT's sinusoidal table"
    if not m.share_embeddings or not translator.tokenizer.joint:
        return "only joint vocabularies with shared embeddings (model.share_embeddings: true) export to MarianMT"
    return None


def _require_empty(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise NMTError(f"{output} is a file; --output names a new (or empty) directory")
    if output.exists() and any(output.iterdir()):
        raise NMTError(f"{output} exists and is not empty; choose another --output")




def marian_config(translator: Translator):
    from transformers import MarianConfig

    m, vocab = translator.config.model, translator.tokenizer.tgt_vocab_size
    pad, eos, bos = (exported_id(t, vocab) for t in (PAD_ID, EOS_ID, BOS_ID))
    return MarianConfig(
        vocab_size=vocab, decoder_vocab_size=vocab, d_model=m.d_model, encoder_layers=m.n_encoder_layers,
        decoder_layers=m.n_decoder_layers, encoder_attention_heads=m.n_heads, decoder_attention_heads=m.n_heads,
        encoder_ffn_dim=m.d_ff, decoder_ffn_dim=m.d_ff, activation_function=m.activation, dropout=m.dropout,
        attention_dropout=m.attention_dropout, activation_dropout=m.activation_dropout,
        max_position_embeddings=m.max_positions, scale_embedding=m.scale_embeddings, share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True, pad_token_id=pad, eos_token_id=eos, bos_token_id=bos,
        decoder_start_token_id=pad, forced_eos_token_id=eos,
        num_beams=translator.config.decode.beam, max_length=m.max_positions)


def export_hf(model_dir: Path, output: Path) -> Path:
    """Write `output` so that `AutoModelForSeq2SeqLM.from_pretrained(output)` computes what our model computes."""
    try:
        from transformers import MarianMTModel
    except ImportError:
        raise NMTError("export needs transformers: pip install 'nmt[export]'") from None
    translator = Translator.load(model_dir, device="cpu", precision="fp32")  # the checkpoint's own fp32 weights
    problem = _unsupported(translator)
    if problem:
        raise NMTError(f"cannot export {model_dir}: {problem}")
    _require_empty(output)
    hf = MarianMTModel(marian_config(translator))
    state = split_projections(translator.model.state_dict())  # MarianMT keeps q, k, v projections apart
    weights = {hf_name(name): tensor for name, tensor in state.items() if "table" not in name and name != "output_bias"}
    weights["model.shared.weight"] = torch.roll(weights["model.shared.weight"], -1, dims=0)  # padding last
    table = sinusoidal_table(translator.config.model.max_positions, translator.config.model.d_model)
    weights["model.encoder.embed_positions.weight"] = weights["model.decoder.embed_positions.weight"] = table
    # Padding is never an output in nmt (a -inf logit); the bias says the same to transformers.
    bias = translator.model.output_bias
    weights["final_logits_bias"] = (torch.roll(bias.detach().float(), -1).view(1, -1) if bias is not None
                                    else torch.zeros_like(hf.final_logits_bias))
    if not translator.config.model.pad_in_softmax:
        weights["final_logits_bias"][0, exported_id(PAD_ID, hf.config.vocab_size)] = float("-inf")
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    untied = [k for k in missing if not k.endswith("embed_tokens.weight") and k != "lm_head.weight"]
    if untied or unexpected:
        raise NMTError(f"export mapping is incomplete: missing {untied[:3]}, unexpected {unexpected[:3]}")
    hf.tie_weights()

    def write(tmp: Path) -> None:
        hf.save_pretrained(tmp)
        _write_tokenizer(translator, tmp)
    return atomic.atomic_write(output, write, existing="empty")  # `output` is absent or empty (checked above)


def _write_tokenizer(translator: Translator, directory: Path) -> None:
    """MarianTokenizer files: the SentencePiece models as source and target, and the id of every piece (an
    imported model's own vocabulary, where it has one)."""
    tokenizer = translator.tokenizer
    files = [f for f in tokenizer.files if f.suffix == ".model"]
    for name, model_file in zip(("source.spm", "target.spm"), files * 2 if len(files) == 1 else files):
        shutil.copyfile(model_file, directory / name)
    processor = tokenizer.tgt
    size = tokenizer.tgt_vocab_size
    pieces = tokenizer.vocab.target if tokenizer.vocab is not None else [processor.id_to_piece(i) for i in range(size)]
    vocab = {piece: exported_id(i, size) for i, piece in enumerate(pieces)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    d = translator.config.data
    # A multilingual model's sources start with the target's tag, ">>de<< text", as OPUS-MT's do: MarianTokenizer
    # keeps such a tag whole and looks it up in vocab.json.
    source_lang, target_lang = ("mul", "mul") if d.pairs else (d.src_lang, d.tgt_lang)
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "MarianTokenizer", "source_lang": source_lang, "target_lang": target_lang,
        "model_max_length": translator.config.model.max_positions - 1, "separate_vocabs": False,
        "pad_token": pieces[PAD_ID], "unk_token": pieces[UNK_ID], "eos_token": pieces[EOS_ID]}, indent=2),
        encoding="utf-8")


def export_ct2(model_dir: Path, output: Path, quantization: str | None = None) -> Path:
    """Write a CTranslate2 model directory: the MarianMT export, converted by CTranslate2's own converter.

    `quantization` is CTranslate2's weight type (int8, int8_float16, float16, ...); None keeps float32.
    The SentencePiece model is copied in as `source.spm`/`target.spm` for tokenizing its input.
    """
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        raise NMTError("export to ct2 needs ctranslate2: pip install 'nmt[export]'") from None
    _require_empty(output)
    with tempfile.TemporaryDirectory(prefix="nmt-export-") as work:
        hf = export_hf(model_dir, Path(work) / "hf")

        def write(tmp: Path) -> None:
            try:
                TransformersConverter(str(hf)).convert(str(tmp), quantization=quantization)
            except (ValueError, NotImplementedError) as exc:
                raise NMTError(f"CTranslate2 could not convert {model_dir}: {exc}") from None
            for name in ("source.spm", "target.spm"):
                shutil.copyfile(hf / name, tmp / name)
        return atomic.atomic_write(output, write, existing="empty")


ARGOS_SUFFIX = ".argosmodel"


def export_argos(model_dir: Path, output: Path, quantization: str | None = None, src_lang: str | None = None,
                 tgt_lang: str | None = None) -> Path:
    """Write an Argos Translate package: a zip of one directory `translate-SRC_TGT-1_0/` holding

        metadata.json         language codes and names, package and Argos versions, type "translate"
        model/                the CTranslate2 model (`export_ct2`), told to add EOS to every source
        sentencepiece.model   the model's (joint) SentencePiece model, which Argos tokenizes with
        README.md             where the package comes from

    `argostranslate.package.install_from_path(output)` installs it; LibreTranslate then serves it.
    Argos hands CTranslate2 the source pieces without EOS (OpenNMT-py's models are trained without
    one); nmt's are trained with it, so the model's config asks CTranslate2 to add it.

    A multilingual model (data.pairs) gives one package per direction (`src_lang` -> `tgt_lang`). Argos'
    metadata can only force a target prefix, and these models read the target's tag `>>de<<` first in
    the source; so the package's CTranslate2 config names the tag as its source BOS token and asks for
    it to be added (`add_source_bos`), which puts the tag where the model was trained to find it.
    """
    if output.suffix != ARGOS_SUFFIX:
        raise NMTError(f"--output {output}: an Argos Translate package is one file named *{ARGOS_SUFFIX}")
    if output.exists():
        raise NMTError(f"{output} exists; choose another --output")
    if not output.parent.is_dir():
        raise NMTError(f"--output {output}: the directory {output.parent} does not exist")
    translator = Translator.load(model_dir, device="cpu")
    data = translator.config.data
    tag = None
    if data.pairs:
        if not src_lang or not tgt_lang:
            raise NMTError(f"{model_dir} translates {', '.join(data.pairs)}: an Argos package holds one direction; "
                           "give --src-lang and --tgt-lang")
        tagged = translator.tokenizer_for(src_lang, tgt_lang)  # a language without a tag is refused here, in one line
        tag = tagged.src.id_to_piece(tagged.src_prefix[0])  # the tag of the code it matched ("deu" names "de")
        data = dataclasses.replace(data, src_lang=src_lang, tgt_lang=tgt_lang)
    elif (src_lang and src_lang != data.src_lang) or (tgt_lang and tgt_lang != data.tgt_lang):
        raise NMTError(f"{model_dir} translates {data.src_lang}-{data.tgt_lang} only")
    name = f"translate-{data.src_lang}_{data.tgt_lang}-1_0"
    with tempfile.TemporaryDirectory(prefix="nmt-argos-") as work:
        root = Path(work) / name
        root.mkdir()
        model = export_ct2(model_dir, root / "model", quantization)
        config_path = model / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["add_source_eos"] = True
        if tag is not None:
            config["bos_token"], config["add_source_bos"] = tag, True
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        (model / "source.spm").rename(root / "sentencepiece.model")  # the vocabulary is joint: one model
        (model / "target.spm").unlink()
        metadata = {"package_version": "1.0", "argos_version": "1.9", "type": "translate", "code": name,
                    "from_code": data.src_lang, "from_name": language_name(data.src_lang),
                    "to_code": data.tgt_lang, "to_name": language_name(data.tgt_lang), "links": []}
        (root / "metadata.json").write_text(json.dumps(metadata, indent=2), encoding="utf-8")
        (root / "README.md").write_text(
            f"# {metadata['from_name']} to {metadata['to_name']}\n\nA translation model trained with nmt "
            f"{__version__} and exported by `nmt export --format argos` from `{Path(model_dir).name}`"
            f"{f' with {quantization} weights' if quantization else ''}.\n", encoding="utf-8")

        def write(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(root.rglob("*")):
                    archive.write(path, path.relative_to(work))
        atomic.save(output, write)
    return output
