"""`nmt serve` with what clients send: paragraphs, HTML, files, `source: auto`, /detect, deep nesting."""

from __future__ import annotations

import http.client
import json
import uuid
from typing import Iterator

import pytest

from conftest import TINY, toy_pairs
from test_serve import Server, toy_model, translator  # noqa: F401 - the fixtures
from nmt import Translator
from nmt.documents.alignment import word_links
from nmt.documents.html import element_tree
from nmt.documents.sentences import segmenter_for
from nmt.documents.translate import translate_html, translate_paragraphs

pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def running(translator: Translator) -> Iterator[Server]:  # noqa: F811
    server = Server([translator])
    yield server
    server.stop()


def paragraph(seed: int, sentences: int = 5) -> tuple[str, list[str], list[str]]:
    """A paragraph of toy sentences with assorted end marks and spaces, its sentences and the spaces between."""
    src = toy_pairs(sentences, seed)[0]
    marks, spaces = [".", "!", "?", ".", "."], [" ", "  ", " ", "\t", " "]
    parts = [f"{s[0].upper()}{s[1:]} ka{marks[i % 5]}" for i, s in enumerate(src)]  # "mi." could be an abbreviation
    glue = [spaces[i % 5] for i in range(len(parts) - 1)]
    return "".join(p + g for p, g in zip(parts, glue + [""])), parts, glue


def test_a_paragraph_equals_its_sentences_translated_one_by_one(running: Server, translator: Translator) -> None:  # noqa: F811
    text, parts, glue = paragraph(3)
    assert segmenter_for(translator).segment(text).sentences == tuple(parts)
    status, answer = running.translate(text)
    alone = [translator.translate([part])[0] for part in parts]
    assert status == 200
    assert answer["translatedText"] == "".join(t + g for t, g in zip(alone, glue + [""]))


def test_lists_of_paragraphs_keep_order_and_empty_texts(running: Server, translator: Translator) -> None:  # noqa: F811
    texts = [paragraph(seed, 2 + seed % 4)[0] for seed in range(6)] + ["", "   ", " \n "]
    status, answer = running.translate(texts)
    offline = translate_paragraphs(texts[:6], segmenter_for(translator), translator.translate)
    assert status == 200 and answer["translatedText"] == offline + ["", "   ", " \n "]


HTML = ('<p>Ka <b>lu mi</b> ka. <a href="/x" title="lu ka">Mi lu</a> ka!</p><ul><li>ka mi<li>lu</ul>'
        '<script>ka("<b>")</script><code>ka lu</code>')


def test_html_through_the_server_equals_the_offline_translation(running: Server, translator: Translator) -> None:  # noqa: F811
    status, answer = running.translate([HTML, "<p>mi ka.</p>"], format="html")
    offline = [translate_html(text, segmenter_for(translator), translator.translate,
                              lambda pairs: word_links(translator, pairs)) for text in (HTML, "<p>mi ka.</p>")]
    assert status == 200 and answer["translatedText"] == offline
    assert element_tree(answer["translatedText"][0]) == element_tree(HTML)
    assert '<script>ka("<b>")</script><code>ka lu</code>' in answer["translatedText"][0]


@pytest.mark.parametrize("body", [
    '{"q": ' + "[" * 5000 + "]" * 5000 + ', "source": "xx", "target": "yy"}',
    json.dumps({"q": "<b>" * 3000 + "ka", "source": "xx", "target": "yy", "format": "html"}),
])
def test_deep_nesting_is_a_400(running: Server, body: str) -> None:
    status, answer = running.request("POST", "/translate", body, {"Content-Type": "application/json"})
    assert status == 400 and ("nested" in answer["error"]), answer


def upload(server: Server, name: str, data: bytes, **fields: str) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in
             {"source": "xx", "target": "yy", **fields}.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return server.request("POST", "/translate_file", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def download(server: Server, url: str) -> tuple[int, bytes, str]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request("GET", url.split(f":{server.port}", 1)[1])
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Content-Disposition") or ""
    finally:
        connection.close()


def test_translate_file_answers_a_url_to_the_translated_file(running: Server, translator: Translator) -> None:  # noqa: F811
    text = "Ka lu. Mi ka!\n\nlu mi ka\n"
    status, answer = upload(running, "notes.txt", text.encode())
    assert status == 200 and answer["translatedFileUrl"].startswith(running.url + "download_file/")
    status, data, disposition = download(running, answer["translatedFileUrl"])
    offline = translate_paragraphs(text.split("\n"), segmenter_for(translator), translator.translate)
    assert status == 200 and data.decode() == "\n".join(offline) and 'filename="notes.txt"' in disposition
    status, answer = upload(running, "page.html", HTML.encode())
    status, data, _ = download(running, answer["translatedFileUrl"])
    assert status == 200 and element_tree(data.decode()) == element_tree(HTML)


@pytest.mark.parametrize("name,data,status,message", [
    ("a.pdf", b"%PDF-1.4", 400, "not supported"),
    ("noext", b"ka", 400, "not supported"),
    ("a.txt", b"", 400, "empty file"),
    ("a.txt", b"\xff\xfe\x00bad", 400, "not UTF-8"),
    ("a.docx", b"not a zip", 400, "Invalid request"),
    ("a.txt", b"ka lu " * 40_000, 413, "limit"),
])
def test_bad_files_get_a_4xx_json_error(running: Server, name: str, data: bytes, status: int, message: str) -> None:
    found, answer = upload(running, name, data)
    assert found == status and message in answer["error"], answer


def test_an_unknown_download_is_a_404(running: Server) -> None:
    status, data, _ = download(running, running.url + "download_file/" + "0" * 32 + ".x.txt")
    assert status == 404 and "error" in json.loads(data)
    status, data, _ = download(running, running.url + "download_file/..%2F..%2Fetc%2Fpasswd")
    assert status == 404


@pytest.fixture(scope="module")
def two_languages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """en->de and fr->de models (random tiny weights) behind one server: detection has two languages to tell apart."""
    import torch

    from nmt import checkpoint
    from nmt.config import load_config, save_config
    from nmt.tokenizer import prepare_tokenizer
    from nmt.translator import CONFIG_FILE, build_model

    translators = []
    for lang in ("en", "fr"):
        model_dir = tmp_path_factory.mktemp(f"{lang}-de")
        config = load_config(None, [*TINY, f"data.src_lang={lang}", "data.tgt_lang=de", "model.max_positions=48",
                                    "data.max_tokens_per_side=40", "decode.beam=1"])
        src, tgt = toy_pairs(300, seed=5)
        tokenizer = prepare_tokenizer(config.tokenizer, model_dir, src, tgt)
        save_config(config, model_dir / CONFIG_FILE)
        torch.manual_seed(0)
        checkpoint.save_best(model_dir, 0, build_model(config, tokenizer), {})
        translators.append(Translator.load(model_dir, device="cpu"))
    server = Server(translators)
    yield server
    server.stop()


def test_detect_and_source_auto_with_the_libretranslate_client(two_languages: Server) -> None:
    libretranslatepy = pytest.importorskip("libretranslatepy")
    client = libretranslatepy.LibreTranslateAPI(two_languages.url)
    assert client.detect("The weather is lovely today and the children are playing outside.")[0]["language"] == "en"
    assert client.detect("Il fait très beau aujourd'hui et les enfants jouent dehors.")[0]["language"] == "fr"
    assert isinstance(client.translate("The children are playing in the garden.", "auto", "de"), str)
    status, answer = two_languages.request("POST", "/translate", {"q": ["Les enfants jouent dans le jardin.",
                                                                        "The children play in the garden."],
                                                                  "source": "auto", "target": "de"})
    assert status == 200 and [d["language"] for d in answer["detectedLanguage"]] == ["fr", "en"]
    status, settings = two_languages.request("GET", "/frontend/settings")
    assert status == 200 and settings["language"]["source"]["code"] == "auto" and ".docx" in settings["supportedFilesFormat"]


def test_malformed_html_is_answered_not_a_500(running: Server) -> None:
    for text in ("<p>Ka <b>lu <i>mi", "</div></p>ka", "<p title='ka'>lu</p><<>>", "<!-- ka", "<![CDATA[ka]]>lu"):
        status, answer = running.translate(text, format="html")
        assert status == 200 and element_tree(answer["translatedText"]) == element_tree(text), (text, answer)


def test_translate_file_round_trips_office_documents(running: Server) -> None:
    from test_office import make_docx, make_odt, part

    docx = make_docx('<w:p><w:r><w:t xml:space="preserve">ka lu </w:t></w:r><w:r><w:rPr><w:b/></w:rPr>'
                     '<w:t>mi ka</w:t></w:r></w:p>')
    odt = make_odt('<text:p>ka <text:span text:style-name="T1">lu mi</text:span> ka</text:p>')
    for name, data, xml in (("a.docx", docx, "word/document.xml"), ("a.odt", odt, "content.xml")):
        status, answer = upload(running, name, data)
        assert status == 200, answer
        status, out, disposition = download(running, answer["translatedFileUrl"])
        assert status == 200 and f'filename="{name}"' in disposition
        before, after = part(data, xml), part(out, xml)
        assert [e.tag for e in before.iter()] == [e.tag for e in after.iter()]  # the same structure
        assert "".join(after.itertext()) != "".join(before.itertext())  # and the text translated
