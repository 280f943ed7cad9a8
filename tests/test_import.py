"""Importing Hugging Face models: tiny MarianMT (joint, separate and multilingual vocabularies) and M2M100/NLLB
models made here from the transformers config classes with random weights and a SentencePiece model
trained here; nmt must compute what transformers computes, and translate what `generate` does."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import toy_pairs
from nmt import Translator
from nmt.search import beam_search, greedy_search
from nmt.tokenizer import EOS_ID

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

WORDS = "the a house tree cat dog red blue big small runs sits here there and is on".split()
TEXTS = ["the house is red", "a small dog runs here", "the cat sits on the tree", "blue", "big red house and dog"]
SETTINGS = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0)


def train_spm(path: Path, vocab_size: int, model_type: str = "unigram", seed: int = 0, **ids: int) -> Path:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(400)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(path), vocab_size=vocab_size,
                                   model_type=model_type, minloglevel=2, num_threads=1, **ids)
    return Path(f"{path}.model")


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights away from their initial values, so that a mis-mapped tensor (a norm, a bias) cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (0.1 if p.dim() == 1 else 0.3)
                    + (1.0 if "layer_norm.weight" in name else 0.0))


def make_marian(root: Path, separate: bool = False, tags: tuple[str, ...] = ()) -> Path:
    """A MarianMT directory as OPUS-MT's are laid out: source.spm, target.spm, vocab.json (pad last)."""
    root.mkdir(parents=True, exist_ok=True)
    source = train_spm(root / "src", 36, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    target = train_spm(root / "tgt", 36, "bpe", seed=1, unk_id=0, bos_id=1, eos_id=2, pad_id=-1) if separate else source

    def vocabulary(model: Path) -> dict[str, int]:
        processor = spm.SentencePieceProcessor(model_file=str(model))
        pieces = ["</s>", "<unk>", *[f">>{t}<<" for t in tags],
                  *[processor.id_to_piece(i) for i in range(3, processor.get_piece_size())], "<pad>"]
        return {p: i for i, p in enumerate(pieces)}
    src_vocab, tgt_vocab = vocabulary(source), vocabulary(target)
    out = root / "hf"
    out.mkdir()
    (out / "vocab.json").write_text(json.dumps(src_vocab))
    if separate:
        (out / "target_vocab.json").write_text(json.dumps(tgt_vocab))
    (out / "source.spm").write_bytes(source.read_bytes())
    (out / "target.spm").write_bytes(target.read_bytes())
    (out / "tokenizer_config.json").write_text(json.dumps({"source_lang": "en", "target_lang": "de",
                                                           "separate_vocabs": separate}))
    pad = len(src_vocab) - 1
    config = transformers.MarianConfig(vocab_size=len(src_vocab), decoder_vocab_size=len(tgt_vocab),
                                       share_encoder_decoder_embeddings=not separate, pad_token_id=pad, eos_token_id=0,
                                       decoder_start_token_id=pad, forced_eos_token_id=None, scale_embedding=True,
                                       activation_function="swish", **SETTINGS)
    model = transformers.MarianMTModel(config).eval()
    randomize(model)
    with torch.no_grad():  # a trained model's bias: nothing at padding; EOS rare, so outputs have words
        model.final_logits_bias[0, pad] = 0.0
        model.final_logits_bias[0, 0] -= 3.0
    model.save_pretrained(out)
    return out


def make_m2m100(root: Path) -> Path:
    """An NLLB-style directory: sentencepiece.bpe.model, tokenizer.json with its language codes."""
    root.mkdir(parents=True, exist_ok=True)
    model_file = train_spm(root / "bpe", 50, model_type="bpe")
    out = root / "hf"
    out.mkdir()
    (out / "sentencepiece.bpe.model").write_bytes(model_file.read_bytes())
    tokenizer = transformers.NllbTokenizer.from_pretrained(out, src_lang="eng_Latn",
                                                           extra_special_tokens=["eng_Latn", "deu_Latn", "fra_Latn"])
    tokenizer.save_pretrained(out)
    config = transformers.M2M100Config(vocab_size=len(tokenizer), scale_embedding=True, activation_function="relu",
                                       pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                                       **SETTINGS)
    model = transformers.M2M100ForConditionalGeneration(config).eval()
    randomize(model)
    model.save_pretrained(out)
    return out


def at_limit(limit: int, eos: int):
    """A logits processor that leaves `generate` only EOS, with its own score, as its `limit`-th token: what nmt
    does at an output's length limit (transformers' forced_eos_token_id would score that EOS 0)."""
    class OnlyEos(transformers.LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if input_ids.size(1) < limit:  # input_ids start with the decoder's start token
                return scores
            only = torch.full_like(scores, float("-inf"))
            only[:, eos] = scores[:, eos]
            return only
    return transformers.LogitsProcessorList([OnlyEos()])


def imported(hf_dir: Path, run_dir: Path, *args: str) -> Translator:
    from nmt.importing.run import import_model

    import_model(str(hf_dir), run_dir, *args)
    return Translator.load(run_dir, device="cpu")


@pytest.fixture(scope="module", params=["joint", "separate"])
def marian(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Translator]:
    root = tmp_path_factory.mktemp(f"marian-{request.param}")
    hf_dir = make_marian(root, separate=request.param == "separate")
    return hf_dir, imported(hf_dir, root / "run")


def _hf_to_nmt(translator: Translator, tokenizer, side: str) -> dict[int, int]:
    vocab = translator.tokenizer.vocab
    index = vocab.source_index if side == "source" else vocab.target_index
    encoder = tokenizer.target_encoder if side == "target" and tokenizer.separate_vocabs else tokenizer.encoder
    return {i: index[p] for p, i in encoder.items()}


def test_marian_log_probs_match(marian: tuple[Path, Translator]) -> None:
    hf_dir, ours = marian
    theirs = transformers.MarianMTModel.from_pretrained(hf_dir).eval()
    tokenizer = transformers.MarianTokenizer.from_pretrained(hf_dir)
    batch = tokenizer(TEXTS[:3], text_target=TEXTS[1:4], return_tensors="pt", padding=True)
    to_src, to_tgt = _hf_to_nmt(ours, tokenizer, "source"), _hf_to_nmt(ours, tokenizer, "target")
    pad = theirs.config.pad_token_id
    labels = batch["labels"]
    decoder_in = torch.cat([torch.full((3, 1), pad), labels[:, :-1]], dim=1)
    with torch.no_grad():
        found = torch.log_softmax(theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                         decoder_input_ids=decoder_in).logits, -1)
        src = batch["input_ids"].clone().apply_(lambda i: to_src[i])
        tgt = decoder_in.clone().apply_(lambda i: to_tgt[i])
        expected = torch.log_softmax(ours.model(src, tgt), -1)
    columns = torch.tensor([to_tgt[i] for i in range(found.size(-1))])
    mask = batch["attention_mask"].bool()
    real = labels != pad  # positions whose decoder input is real
    assert (expected[..., columns] - found)[real].abs().max().item() < 1e-4
    assert torch.isinf(expected[..., 2]).all()  # the BOS nmt added is never a candidate: its logit is -inf
    assert mask.any()


@pytest.mark.parametrize("beam", [1, 5])
def test_marian_search_equals_generate(marian: tuple[Path, Translator], beam: int) -> None:
    hf_dir, ours = marian
    theirs = transformers.MarianMTModel.from_pretrained(hf_dir).eval()
    tokenizer = transformers.MarianTokenizer.from_pretrained(hf_dir)
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    limit = 12
    generated = theirs.generate(**batch, num_beams=beam, do_sample=False, early_stopping=True, length_penalty=1.0,
                                max_new_tokens=limit, bad_words_ids=[[theirs.config.pad_token_id]],
                                logits_processor=at_limit(limit, theirs.config.eos_token_id))
    expected = tokenizer.batch_decode(generated, skip_special_tokens=True)
    assert ours.translate(TEXTS, beam=beam, max_len_a=0, max_len_b=limit) == expected
    assert all(expected)


def test_marian_translate_cli_equals_hf(marian: tuple[Path, Translator], tmp_path: Path) -> None:
    hf_dir, ours = marian
    theirs = transformers.MarianMTModel.from_pretrained(hf_dir).eval()
    tokenizer = transformers.MarianTokenizer.from_pretrained(hf_dir)
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    expected = tokenizer.batch_decode(theirs.generate(**batch, num_beams=5, early_stopping=True, max_new_tokens=12,
                                                      bad_words_ids=[[theirs.config.pad_token_id]],
                                                      logits_processor=at_limit(12, theirs.config.eos_token_id)),
                                      skip_special_tokens=True)
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS) + "\n")
    run_dir = Path(ours.config.model.imported_from).parent / "run"
    out = subprocess.run([sys.executable, "-m", "nmt_cli.main", "translate", "--model", str(run_dir), "--input",
                          str(source), "--beam", "5", "--device", "cpu", "--set", "decode.max_len_a=0",
                          "--set", "decode.max_len_b=12"], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == expected


def test_multilingual_marian_takes_the_target_tag(tmp_path: Path) -> None:
    hf_dir = make_marian(tmp_path, tags=("fra", "deu"))
    ours = imported(hf_dir, tmp_path / "run")
    assert ours.config.tokenizer.language_tags == "target_in_source" and ours.tokenizer.languages() == ["deu", "fra"]
    theirs = transformers.MarianMTModel.from_pretrained(hf_dir).eval()
    tokenizer = transformers.MarianTokenizer.from_pretrained(hf_dir)
    found = {}
    for code in ("fra", "deu"):
        batch = tokenizer([f">>{code}<< {t}" for t in TEXTS], return_tensors="pt", padding=True)
        generated = theirs.generate(**batch, num_beams=5, early_stopping=True, max_new_tokens=12,
                                    bad_words_ids=[[theirs.config.pad_token_id]],
                                    logits_processor=at_limit(12, theirs.config.eos_token_id))
        found[code] = ours.translate(TEXTS, beam=5, max_len_a=0, max_len_b=12, tgt_lang=code)
        assert found[code] == tokenizer.batch_decode(generated, skip_special_tokens=True)
        assert not any(">>" in line for line in found[code])  # the tag is never an output
    assert found["fra"] != found["deu"]
    from nmt.errors import NMTError

    with pytest.raises(NMTError, match="target language 'xx'.*deu, fra"):
        ours.translate(TEXTS, tgt_lang="xx")


@pytest.fixture(scope="module")
def nllb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Translator]:
    root = tmp_path_factory.mktemp("nllb")
    hf_dir = make_m2m100(root)
    return hf_dir, imported(hf_dir, root / "run", "eng_Latn", "deu_Latn")


def test_nllb_log_probs_match(nllb: tuple[Path, Translator]) -> None:
    hf_dir, ours = nllb
    theirs = transformers.M2M100ForConditionalGeneration.from_pretrained(hf_dir).eval()
    tokenizer = transformers.NllbTokenizer.from_pretrained(hf_dir, src_lang="eng_Latn", tgt_lang="deu_Latn")
    batch = tokenizer(TEXTS[:3], text_target=TEXTS[1:4], return_tensors="pt", padding=True)
    assert batch["input_ids"][0, 0] == tokenizer.convert_tokens_to_ids("eng_Latn")  # [src_lang] X </s>
    labels = batch["labels"]
    decoder_in = torch.cat([torch.full((3, 1), theirs.config.decoder_start_token_id), labels[:, :-1]], dim=1)
    vocab = ours.tokenizer.vocab
    to_nmt = {i: vocab.source_index[tokenizer.convert_ids_to_tokens(i)] for i in range(len(tokenizer))}
    with torch.no_grad():
        found = torch.log_softmax(theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                         decoder_input_ids=decoder_in).logits, -1)
        expected = torch.log_softmax(ours.model(batch["input_ids"].clone().apply_(lambda i: to_nmt[i]),
                                                decoder_in.clone().apply_(lambda i: to_nmt[i])), -1)
    columns = torch.tensor([to_nmt[i] for i in range(found.size(-1))])
    real = labels != theirs.config.pad_token_id
    assert (expected[..., columns] - found)[real].abs().max().item() < 1e-4
    # nmt's own encoding of the same text: the source tag first, the target tag forced first.
    tags = ours.tokenizer_for("eng_Latn", "deu_Latn")
    assert tags.encode_src([TEXTS[0]])[0] == [to_nmt[i] for i in tokenizer([TEXTS[0]]).input_ids[0][:-1]]
    assert tags.tgt_prefix == (to_nmt[tokenizer.convert_tokens_to_ids("deu_Latn")],)


@pytest.mark.parametrize("beam", [1, 5])
def test_nllb_forced_target_equals_generate(nllb: tuple[Path, Translator], beam: int) -> None:
    hf_dir, ours = nllb
    theirs = transformers.M2M100ForConditionalGeneration.from_pretrained(hf_dir).eval()
    tokenizer = transformers.NllbTokenizer.from_pretrained(hf_dir, src_lang="eng_Latn")
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    limit = 10
    for code in ("deu_Latn", "fra_Latn"):
        generated = theirs.generate(**batch, num_beams=beam, early_stopping=True, max_new_tokens=limit + 1,
                                    forced_bos_token_id=tokenizer.convert_tokens_to_ids(code),
                                    bad_words_ids=[[0], [1]], logits_processor=at_limit(limit + 1, 2))
        expected = tokenizer.batch_decode(generated, skip_special_tokens=True)
        assert all(row[1] == tokenizer.convert_tokens_to_ids(code) for row in generated.tolist())
        found = ours.translate(TEXTS, beam=beam, max_len_a=0, max_len_b=limit, src_lang="eng_Latn", tgt_lang=code)
        assert found == expected and all(found)
    # "de" names deu_Latn; the default languages are the ones given at import
    assert ours.translate(TEXTS[:2], beam=beam, tgt_lang="de") == ours.translate(TEXTS[:2], beam=beam)


def test_nmt_export_imports_back_bit_for_bit(tmp_path: Path) -> None:
    from test_export import make_model_dir

    from nmt.export import export_hf

    model_dir = make_model_dir(tmp_path / "ours", "model.norm_first=false", "model.activation=gelu")
    ours = Translator.load(model_dir, device="cpu")
    back = imported(export_hf(model_dir, tmp_path / "hf"), tmp_path / "back")
    expected, found = ours.model.state_dict(), back.model.state_dict()
    assert expected.keys() == found.keys()
    assert all(torch.equal(expected[k], found[k]) for k in expected)
    assert back.model.output_bias is None and not back.config.model.pad_in_softmax
    from nmt.data import pad

    src = pad([ours.tokenizer.encode_src([line])[0] + [EOS_ID] for line in ["ka lu mi ze", "bo di no pe ri su"]])
    for search in (lambda m: greedy_search(m, src, torch.full((2,), 12)),
                   lambda m: beam_search(m, src, torch.full((2,), 12), 3, nbest=3)):
        assert [[h.tokens for h in hs] for hs in search(ours.model)] == [[h.tokens for h in hs] for hs in search(back.model)]
    lines = [" ".join(toy_pairs(1, seed=s)[0]) for s in range(8)]
    assert ours.tokenizer.encode_src(lines) == back.tokenizer.encode_src(lines)


def test_what_nmt_cannot_hold_is_refused_naming_the_field(tmp_path: Path) -> None:
    from nmt.errors import NMTError

    hf_dir = make_marian(tmp_path / "m")
    config = json.loads((hf_dir / "config.json").read_text())
    for field, value in (("decoder_start_token_id", 0), ("activation_function", "gelu_new"),
                         ("decoder_attention_heads", 2), ("model_type", "t5")):
        (hf_dir / "config.json").write_text(json.dumps({**config, field: value}))
        with pytest.raises(NMTError, match=field):
            imported(hf_dir, tmp_path / f"run-{field}")
        assert not (tmp_path / f"run-{field}").exists()


def test_hub_without_network_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    env = {**__import__("os").environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf-home")}
    out = subprocess.run([sys.executable, "-m", "nmt_cli.main", "import", "hub:Helsinki-NLP/opus-mt-en-de",
                          "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: hub:Helsinki-NLP/opus-mt-en-de: cannot reach") and \
        "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


def test_an_imported_opus_model_exports_again(marian: tuple[Path, Translator], tmp_path: Path) -> None:
    """Bias, swish and the padding kept in the softmax survive export: the exported model computes what the
    imported one does (and the original did)."""
    from nmt.export import export_hf

    hf_dir, ours = marian
    if not ours.tokenizer.joint:
        pytest.skip("separate vocabularies do not export to MarianMT here")
    run_dir = Path(ours.config.model.imported_from).parent / "run"
    out = export_hf(run_dir, tmp_path / "again")
    tokenizer = transformers.MarianTokenizer.from_pretrained(out)
    model = transformers.MarianMTModel.from_pretrained(out).eval()
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    generated = model.generate(**batch, num_beams=1, max_new_tokens=12,
                               bad_words_ids=[[model.config.pad_token_id], [model.config.bos_token_id]],
                               logits_processor=at_limit(12, model.config.eos_token_id))
    assert tokenizer.batch_decode(generated, skip_special_tokens=True) == ours.translate(TEXTS, beam=1, max_len_a=0,
                                                                                         max_len_b=12)
    original = transformers.MarianMTModel.from_pretrained(hf_dir).eval()
    first = transformers.MarianTokenizer.from_pretrained(hf_dir)
    with torch.no_grad():  # the same sentence's scores, through the first vocabulary and through the exported one
        a = original(**first(TEXTS[:1], text_target=TEXTS[1:2], return_tensors="pt")).logits.log_softmax(-1)
        b = model(**tokenizer(TEXTS[:1], text_target=TEXTS[1:2], return_tensors="pt")).logits.log_softmax(-1)
    mapping = [tokenizer.encoder[first.convert_ids_to_tokens(i)] for i in range(a.size(-1))]
    assert (a - b[..., mapping]).abs().max().item() < 1e-4


def test_a_tagged_model_serves_its_directions(nllb: tuple[Path, Translator]) -> None:
    pytest.importorskip("uvicorn")
    from starlette.testclient import TestClient

    from nmt.serve import create_app, load_pairs

    _, ours = nllb
    run_dir = Path(ours.config.model.imported_from).parent / "run"
    pairs = load_pairs([run_dir], device="cpu")
    assert {(p.source, p.target) for p in pairs} == {(s, t) for s in ("de", "en", "fr") for t in ("de", "en", "fr")
                                                      if s != t}
    with TestClient(create_app(pairs)) as client:
        languages = {entry["code"]: entry["targets"] for entry in client.get("/languages").json()}
        assert languages == {"de": ["en", "fr"], "en": ["de", "fr"], "fr": ["de", "en"]}
        for target, code in (("de", "deu_Latn"), ("fr", "fra_Latn")):
            answer = client.post("/translate", json={"q": TEXTS, "source": "en", "target": target}).json()
            assert answer["translatedText"] == ours.translate(TEXTS, src_lang="eng_Latn", tgt_lang=code)
        refused = client.post("/translate", json={"q": "x", "source": "en", "target": "xx"})
        assert refused.status_code == 400 and "en to xx is not supported" in refused.json()["error"]


def test_m2m100_takes_its_language_tokens(tmp_path: Path) -> None:
    """M2M100's own tokenizer layout (vocab.json, `__de__` codes numbered after it): what generate gives with
    forced_bos_token_id, nmt gives with --tgt-lang."""
    model_file = train_spm(tmp_path / "bpe", 50, model_type="bpe")
    processor = spm.SentencePieceProcessor(model_file=str(model_file))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({processor.id_to_piece(i): 4 + i - 3 for i in range(3, processor.get_piece_size())})
    out = tmp_path / "hf"
    out.mkdir()
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "sentencepiece.bpe.model").write_bytes(model_file.read_bytes())
    tokenizer = transformers.M2M100Tokenizer(vocab_file=str(out / "vocab.json"), spm_file=str(out / "sentencepiece.bpe.model"),
                                             src_lang="en", tgt_lang="de")
    tokenizer.save_pretrained(out)
    size = max(tokenizer.get_lang_id(c) for c in ("en", "de", "fr")) + 9  # the codes, then the made-up words
    config = transformers.M2M100Config(vocab_size=size, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                       decoder_start_token_id=2, **SETTINGS)
    model = transformers.M2M100ForConditionalGeneration(config).eval()
    randomize(model, seed=4)
    model.save_pretrained(out)
    ours = imported(out, tmp_path / "run", "en", "de")
    assert {"en", "de", "fr"} <= set(ours.tokenizer.languages())
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    generated = model.generate(**batch, num_beams=5, early_stopping=True, max_new_tokens=11,
                               forced_bos_token_id=tokenizer.get_lang_id("fr"), bad_words_ids=[[0], [1]],
                               logits_processor=at_limit(11, 2))
    # The same tokens (transformers' M2M100 tokenizer writes language tokens out as text; nmt never does).
    from nmt.decode import translate_ids

    tags = ours.tokenizer_for("en", "fr")
    to_nmt = {i: ours.tokenizer.vocab.source_index[tokenizer.convert_ids_to_tokens(i)] for i in range(size)
              if tokenizer.convert_ids_to_tokens(i) in ours.tokenizer.vocab.source_index}
    hyps = translate_ids(ours.model, tags.encode_src(TEXTS), ours.settings(5, {"max_len_a": 0, "max_len_b": 10}),
                         prefix=tags.tgt_prefix)
    expected = [[to_nmt[i] for i in row[1:] if i not in (1, 2)] for row in generated.tolist()]
    assert [h[0].tokens for h in hyps] == expected and all(row[0] == tags.tgt_prefix[0] for row in expected)
    assert not any("__" in line for line in tags.decode_tgt([h[0].tokens for h in hyps]))
