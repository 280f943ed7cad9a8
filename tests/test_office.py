"""nmt.documents.office: .docx and .odt files translated in place, built by hand here (no office package needed)."""

from __future__ import annotations

import io
import zipfile

import pytest
from lxml import etree

from nmt.documents.office import MAX_MEMBERS, OfficeDocument
from nmt.documents.sentences import Segmenter
from nmt.documents.translate import translate_blocks
from nmt.errors import DataError

SEGMENTER = Segmenter("en", 1000, lambda texts: [len(t.split()) for t in texts])
PNG = bytes(range(256)) * 4  # stands for a picture: only its bytes matter

W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
W = "{%s}" % W_NS
DOCX_NAMESPACES = (f'xmlns:w="{W_NS}" xmlns:w14="http://schemas.microsoft.com/office/word/2010/wordml" '
                   'xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006" '
                   'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships" '
                   'xmlns:wp="http://schemas.openxmlformats.org/drawingml/2006/wordprocessingDrawing" '
                   'xmlns:wps="http://schemas.microsoft.com/office/word/2010/wordprocessingShape" mc:Ignorable="w14"')
TEXT = "{urn:oasis:names:tc:opendocument:xmlns:text:1.0}"
ODT_NAMESPACES = ('xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
                  'xmlns:style="urn:oasis:names:tc:opendocument:xmlns:style:1.0" '
                  'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
                  'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
                  'xmlns:draw="urn:oasis:names:tc:opendocument:xmlns:drawing:1.0" '
                  'xmlns:xlink="http://www.w3.org/1999/xlink" office:version="1.2"')


def translate(sentences: list[str]) -> list[str]:
    return [s.upper() for s in sentences]


def align(pairs):
    return [[(i, i) for i in range(min(len(s.split()), len(t.split())))] for s, t in pairs]


def translated(data: bytes, kind: str) -> bytes:
    document = OfficeDocument(data, kind)
    return document.render(translate_blocks(document.blocks(), SEGMENTER, translate, align))


def make_zip(members: list[tuple[str, bytes, int]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data, compression in members:
            archive.writestr(zipfile.ZipInfo(name, (2024, 5, 1, 12, 0, 0)), data, compress_type=compression)
    return out.getvalue()


def make_docx(body: str, header: str = "") -> bytes:
    deflated = zipfile.ZIP_DEFLATED
    types = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
             '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
             '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
             '<Default Extension="xml" ContentType="application/xml"/>'
             '<Default Extension="png" ContentType="image/png"/>'
             '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.'
             'wordprocessingml.document.main+xml"/></Types>')
    rels = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
            'officeDocument" Target="word/document.xml"/></Relationships>')
    document = (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document {DOCX_NAMESPACES}>'
                f'<w:body>{body}<w:sectPr/></w:body></w:document>')
    members = [("[Content_Types].xml", types.encode(), deflated), ("_rels/.rels", rels.encode(), deflated),
               ("word/document.xml", document.encode(), deflated), ("word/media/image1.png", PNG, zipfile.ZIP_STORED)]
    if header:
        members.append(("word/header1.xml", f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                                            f'<w:hdr {DOCX_NAMESPACES}>{header}</w:hdr>'.encode(), deflated))
    return make_zip(members)


def make_odt(body: str, header: str = "", mimetype: str = "application/vnd.oasis.opendocument.text") -> bytes:
    content = (f'<?xml version="1.0" encoding="UTF-8"?>\n<office:document-content {ODT_NAMESPACES}>'
               f'<office:body><office:text>{body}</office:text></office:body></office:document-content>')
    styles = (f'<?xml version="1.0" encoding="UTF-8"?>\n<office:document-styles {ODT_NAMESPACES}>'
              '<office:styles><style:style style:name="Bold" style:family="text"/></office:styles>'
              '<office:master-styles><style:master-page style:name="Standard"><style:header>'
              f'{header}</style:header></style:master-page></office:master-styles></office:document-styles>')
    media = (("/", "application/vnd.oasis.opendocument.text"), ("content.xml", "text/xml"),
             ("styles.xml", "text/xml"), ("Pictures/a.png", "image/png"))
    entries = "".join(f'<manifest:file-entry manifest:full-path="{path}" manifest:media-type="{kind}"/>'
                      for path, kind in media)
    manifest = ('<?xml version="1.0" encoding="UTF-8"?><manifest:manifest xmlns:manifest="urn:oasis:names:tc:'
                f'opendocument:xmlns:manifest:1.0" manifest:version="1.2">{entries}</manifest:manifest>').encode()
    return make_zip([("mimetype", mimetype.encode(), zipfile.ZIP_STORED),
                     ("content.xml", content.encode(), zipfile.ZIP_DEFLATED),
                     ("styles.xml", styles.encode(), zipfile.ZIP_DEFLATED),
                     ("Pictures/a.png", PNG, zipfile.ZIP_STORED),
                     ("META-INF/manifest.xml", manifest, zipfile.ZIP_DEFLATED)])


def part(data: bytes, name: str) -> etree._Element:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return etree.fromstring(archive.read(name))


def assert_other_members_unchanged(before: bytes, after: bytes, rewritten: set[str]) -> None:
    with zipfile.ZipFile(io.BytesIO(before)) as old, zipfile.ZipFile(io.BytesIO(after)) as new:
        assert [i.filename for i in old.infolist()] == [i.filename for i in new.infolist()]
        assert [i.compress_type for i in old.infolist()] == [i.compress_type for i in new.infolist()]
        for name in old.namelist():
            assert name in rewritten or old.read(name) == new.read(name), name


def run_texts(paragraph: etree._Element) -> list[tuple[str, bool]]:
    """(text, bold) of each run with text, in order."""
    return [("".join(t.text or "" for t in run.iter(W + "t")), run.find(f"{W}rPr/{W}b") is not None)
            for run in paragraph.iter(W + "r") if run.find(W + "t") is not None]


DOCX_BODY = (
    '<w:p><w:pPr><w:pStyle w:val="Title"/></w:pPr><w:r><w:t xml:space="preserve">Hello </w:t></w:r>'
    '<w:r><w:rPr><w:b/></w:rPr><w:t>bold</w:t></w:r><w:r><w:t xml:space="preserve"> world.</w:t></w:r></w:p>'
    '<w:p><w:r><w:t>Name</w:t><w:tab/><w:t>value here</w:t><w:br/><w:t>next line</w:t></w:r></w:p>'
    '<w:p><w:r><w:t xml:space="preserve">See </w:t></w:r><w:hyperlink r:id="rId5"><w:r><w:rPr><w:b/></w:rPr>'
    '<w:t>the site</w:t></w:r></w:hyperlink><w:r><w:t xml:space="preserve"> now</w:t></w:r></w:p>'
    '<w:p><w:r><w:t xml:space="preserve">Picture </w:t></w:r><w:r><w:drawing><wp:inline><wp:docPr id="1" '
    'name="Picture"/></wp:inline></w:drawing></w:r><w:r><w:t>after</w:t></w:r></w:p>'
    '<w:p><w:r><w:fldChar w:fldCharType="begin"/></w:r><w:r><w:instrText xml:space="preserve"> PAGE </w:instrText>'
    '</w:r><w:r><w:fldChar w:fldCharType="separate"/></w:r><w:r><w:t>page one</w:t></w:r>'
    '<w:r><w:fldChar w:fldCharType="end"/></w:r></w:p>'
    '<w:tbl><w:tr><w:tc><w:p><w:r><w:t>cell text</w:t></w:r></w:p><w:tbl><w:tr><w:tc><w:p><w:r><w:t>inner cell'
    '</w:t></w:r></w:p></w:tc></w:tr></w:tbl><w:p/></w:tc></w:tr></w:tbl>'
    '<w:p><w:r><w:t xml:space="preserve">box outer </w:t></w:r><w:r><w:drawing><wps:txbx><w:txbxContent><w:p><w:r>'
    '<w:t>inside box</w:t></w:r></w:p></w:txbxContent></wps:txbx></w:drawing></w:r></w:p>'
    '<w:p><w:r><w:t xml:space="preserve">   </w:t></w:r></w:p>')
DOCX_HEADER = '<w:p><w:r><w:rPr><w:i/></w:rPr><w:t>Header words</w:t></w:r></w:p>'


def test_docx_blocks_are_every_paragraph_once_in_document_order() -> None:
    document = OfficeDocument(make_docx(DOCX_BODY, DOCX_HEADER), "docx")
    assert [block.text for block in document.blocks()] == [
        "Hello bold world.", "Name value here next line", "See the site now", "Picture after", "page one",
        "cell text", "inner cell", "box outer ", "inside box", "Header words"]
    link = document.blocks()[2].marks[1]
    assert (link.start, link.end, len(link.children)) == (4, 12, 1)  # the hyperlink nests its run


def test_docx_is_translated_with_each_run_keeping_its_formatting() -> None:
    source = make_docx(DOCX_BODY, DOCX_HEADER)
    output = translated(source, "docx")
    paragraphs = list(part(output, "word/document.xml").iter(W + "p"))
    assert [(text.strip(), bold) for text, bold in run_texts(paragraphs[0])] == [
        ("HELLO", False), ("BOLD", True), ("WORLD.", False)]
    assert paragraphs[0].find(f"{W}pPr/{W}pStyle") is not None
    run = paragraphs[1].find(W + "r")
    assert [(child.tag.split("}")[1], child.text) for child in run] == [
        ("t", "NAME"), ("tab", None), ("t", "VALUE HERE"), ("br", None), ("t", "NEXT LINE")]
    assert [(text.strip(), bold) for text, bold in run_texts(paragraphs[2])] == [
        ("SEE", False), ("THE SITE", True), ("NOW", False)]
    assert paragraphs[2].find(f"{W}hyperlink/{W}r/{W}t").text == "THE SITE"
    picture = [child.tag.split("}")[1] for child in paragraphs[3]]
    assert picture == ["r", "r", "r"] and paragraphs[3][1].find(W + "drawing") is not None
    assert "".join(t.text for t in paragraphs[3].iter(W + "t")) == "PICTURE AFTER"
    field = paragraphs[4]
    assert field.find(f".//{W}instrText").text == " PAGE " and len(field.findall(f".//{W}fldChar")) == 3
    assert "".join(t.text for t in field.iter(W + "t")) == "PAGE ONE"
    assert [p.find(f".//{W}t").text for p in paragraphs[5:7]] == ["CELL TEXT", "INNER CELL"]
    box = paragraphs[8]
    assert box.find(f".//{W}txbxContent/{W}p/{W}r/{W}t").text == "INSIDE BOX"
    assert "".join(t.text for t in box.iter(W + "t") if t.getparent().getparent() is box) == "BOX OUTER "
    assert paragraphs[-1].find(f".//{W}t").text == "   "  # no text: not a block, left as it was
    header = part(output, "word/header1.xml")
    assert run_texts(header.find(W + "p")) == [("HEADER WORDS", False)] and header.find(f".//{W}i") is not None
    assert_other_members_unchanged(source, output, {"word/document.xml", "word/header1.xml"})


def test_docx_output_keeps_namespace_prefixes_and_reopens() -> None:
    source = make_docx(DOCX_BODY, DOCX_HEADER)
    output = translated(source, "docx")
    with zipfile.ZipFile(io.BytesIO(output)) as archive:
        xml = archive.read("word/document.xml")
    assert xml.startswith(b"<?xml version='1.0' encoding='UTF-8' standalone='yes'?>")
    assert b'mc:Ignorable="w14"' in xml and b"xmlns:w14=" in xml and b"<w:body>" in xml
    again = OfficeDocument(output, "docx").blocks()
    assert [block.text for block in again] == [block.text.upper() for block in OfficeDocument(source, "docx").blocks()]


def test_docx_opens_in_python_docx() -> None:
    docx = pytest.importorskip("docx")
    output = translated(make_docx(DOCX_BODY), "docx")
    paragraphs = docx.Document(io.BytesIO(output)).paragraphs
    assert paragraphs[0].text == "HELLO BOLD WORLD." and paragraphs[0].runs[1].bold


def test_docx_uncovered_text_goes_to_a_neighbouring_run() -> None:
    document = OfficeDocument(make_docx('<w:p><w:r><w:rPr><w:b/></w:rPr><w:t>Two words</w:t></w:r>'
                                        '<w:r><w:t xml:space="preserve"> here</w:t></w:r></w:p>'), "docx")
    block = document.blocks()[0]
    # No alignment: the runs come back empty at the start, so the whole translation follows the last of them
    # and goes into it; the bold run stays, empty, and no text is left outside a run.
    output = document.render(translate_blocks([block], SEGMENTER, lambda s: ["Drei Wörter sind es"], None))
    paragraph = part(output, "word/document.xml").find(f".//{W}p")
    assert run_texts(paragraph) == [("Drei Wörter sind es", False)] and len(paragraph.findall(W + "r")) == 2
    assert not paragraph.findall(f"{W}t")


ODT_BODY = (
    '<text:h text:outline-level="1">A title here</text:h>'
    '<text:p text:style-name="P1">Plain <text:span text:style-name="Bold">strong words</text:span> and more.</text:p>'
    '<text:p>Name<text:tab/>value <text:s text:c="2"/>spaced<text:line-break/>line two</text:p>'
    '<text:p>Go to <text:a xlink:href="http://example.com"><text:span text:style-name="Bold">the site</text:span>'
    '</text:a> today.</text:p>'
    '<text:p>Note here<text:note text:id="n1" text:note-class="footnote"><text:note-citation>1</text:note-citation>'
    '<text:note-body><text:p>the note text</text:p></text:note-body></text:note> after.</text:p>'
    '<text:p><text:span text:style-name="Bold">only span</text:span></text:p>'
    '<table:table><table:table-row><table:table-cell><text:p>cell words</text:p></table:table-cell>'
    '</table:table-row></table:table>'
    '<text:p><draw:frame draw:name="a"><draw:image xlink:href="Pictures/a.png"/></draw:frame>Caption text</text:p>'
    '<text:p/>')


def test_odt_blocks_and_translation_keep_spans_breaks_and_notes() -> None:
    source = make_odt(ODT_BODY, "<text:p>Header text</text:p>")
    document = OfficeDocument(source, "odt")
    assert [block.text for block in document.blocks()] == [
        "A title here", "Plain strong words and more.", "Name value spaced line two", "Go to the site today.",
        "Note here after.", "the note text", "only span", "cell words", "Caption text", "Header text"]
    output = document.render(translate_blocks(document.blocks(), SEGMENTER, translate, align))
    paragraphs = list(part(output, "content.xml").iter(TEXT + "p", TEXT + "h"))
    assert paragraphs[0].text == "A TITLE HERE"
    plain = paragraphs[1]
    assert (plain.text, plain[0].get(TEXT + "style-name"), plain[0].text, plain[0].tail) == (
        "PLAIN ", "Bold", "STRONG WORDS", " AND MORE.")
    breaks = paragraphs[2]
    assert [(child.tag.split("}")[1], child.tail) for child in breaks] == [
        ("tab", "VALUE"), ("s", " SPACED"), ("line-break", "LINE TWO")]
    assert breaks.text == "NAME" and breaks[1].get(TEXT + "c") == "2"
    link = paragraphs[3]
    assert (link.text, link[0][0].text, link[0].tail) == ("GO TO ", "THE SITE", " TODAY.")
    note = paragraphs[4]
    assert (note.text, note[0].tag, note[0].tail) == ("NOTE HERE", TEXT + "note", " AFTER.")
    assert note.find(f".//{TEXT}note-citation").text == "1" and paragraphs[5].text == "THE NOTE TEXT"
    assert not paragraphs[6].text and paragraphs[6][0].text == "ONLY SPAN"  # no unformatted text invented
    assert paragraphs[7].text == "CELL WORDS"
    assert paragraphs[8][0].tag.endswith("frame") and paragraphs[8][0].tail == "CAPTION TEXT"
    assert part(output, "styles.xml").find(f".//{TEXT}p").text == "HEADER TEXT"
    assert_other_members_unchanged(source, output, {"content.xml", "styles.xml"})
    with zipfile.ZipFile(io.BytesIO(output)) as archive:
        first = archive.infolist()[0]
        assert (first.filename, first.compress_type) == ("mimetype", zipfile.ZIP_STORED)
        assert archive.read("mimetype") == b"application/vnd.oasis.opendocument.text"
    again = OfficeDocument(output, "odt").blocks()  # the same words (the space beside text:s may move)
    assert [block.text.split() for block in again] == [block.text.upper().split() for block in document.blocks()]


def test_odt_opens_in_odfpy() -> None:
    pytest.importorskip("odf")
    from odf import opendocument, teletype, text

    output = translated(make_odt(ODT_BODY), "odt")
    loaded = opendocument.load(io.BytesIO(output))
    assert teletype.extractText(loaded.getElementsByType(text.P)[0]) == "PLAIN STRONG WORDS AND MORE."


@pytest.mark.parametrize("kind,make", [("docx", lambda: make_docx("<w:p/>")), ("odt", lambda: make_odt("<text:p/>"))])
def test_an_empty_document_round_trips(kind, make) -> None:
    source = make()
    document = OfficeDocument(source, kind)
    assert document.blocks() == []
    output = document.render([])
    assert_other_members_unchanged(source, output, set())
    assert OfficeDocument(output, kind).blocks() == []


def bomb() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", make_docx("<w:p/>"))
        with archive.open("zeros.bin", "w") as member:
            for _ in range(201):
                member.write(bytes(1 << 20))
    return out.getvalue()


def many_members() -> bytes:
    return make_zip([("word/document.xml", b"<w:document/>", zipfile.ZIP_STORED)]
                    + [(f"m/{i}", b"", zipfile.ZIP_STORED) for i in range(MAX_MEMBERS)])


@pytest.mark.parametrize("kind,make,message", [
    ("docx", lambda: b"not a zip", "not a zip archive"),
    ("odt", lambda: b"PK\x03\x04broken", "not a zip archive"),
    ("docx", lambda: make_odt("<text:p>Hi</text:p>"), "no word/document.xml"),
    ("odt", lambda: make_docx("<w:p/>"), "not an .odt"),
    ("odt", lambda: make_odt("<text:p>Hi</text:p>", mimetype="application/vnd.oasis.opendocument.spreadsheet"),
     "spreadsheet"),
    ("docx", lambda: make_docx("<w:p><w:r><w:t>unclosed</w:p>"), "not well-formed XML"),
    ("docx", bomb, "unpacks to over"),
    ("docx", many_members, "unpacks to over"),
    ("pdf", lambda: b"%PDF", "unknown office format"),
])
def test_bad_files_are_refused_with_one_line(kind: str, make, message: str) -> None:
    with pytest.raises(DataError, match=message) as caught:
        OfficeDocument(make(), kind)
    assert "\n" not in str(caught.value)


def test_entities_are_not_expanded() -> None:
    document = ('<?xml version="1.0"?><!DOCTYPE w:document [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                f'<w:document {DOCX_NAMESPACES}><w:body><w:p><w:r><w:t>a &e; b</w:t></w:r></w:p></w:body>'
                '</w:document>')
    data = make_zip([("word/document.xml", document.encode(), zipfile.ZIP_DEFLATED)])
    blocks = OfficeDocument(data, "docx").blocks()
    assert "root:" not in "".join(block.text for block in blocks)
