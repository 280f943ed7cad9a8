"""Word (.docx) and OpenDocument text (.odt) files translated in place: each paragraph a block, its runs the marks.

Such a file is a zip of XML parts. The parts with text (docx: word/document.xml, the headers, footers,
footnotes and endnotes; odt: content.xml and the page headers and footers of styles.xml) are parsed with
lxml, which keeps the namespace prefixes Word needs (`mc:Ignorable` names prefixes); every other member
is copied unchanged, in its order and with its compression (so odt's `mimetype` stays first, stored).

Every paragraph (docx `w:p`, odt `text:p` and `text:h`; in tables, text boxes and notes too, each once)
with text is a `Block`. Containers (`w:hyperlink`, `w:ins`, `text:span`, `text:a`, ...) are marks with
children; a docx run with text is a mark whose tabs and breaks are points inside it; anything else
(drawings, fields and their instructions, notes, bookmarks, tabs) is a point written back untouched.
On render each place text lives in (a docx run's `w:t` between its points; an odt element's text and
its children's tails) gets the translation's characters of its range; characters no mark covers go to
the place next to them, the preceding one first, so that no text is lost and a paragraph whose text was
all in runs or spans gets no text outside them.
"""

from __future__ import annotations

import bisect
import io
import re
import zipfile
import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

from lxml import etree

from nmt.documents.markup import Block, Mark, project
from nmt.errors import DataError

MAX_UNCOMPRESSED = 200_000_000  # bytes, all members together: more is a zip bomb, not a document
MAX_MEMBERS = 10_000
ODT_MIMETYPE = "application/vnd.oasis.opendocument.text"

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
MC = "{http://schemas.openxmlformats.org/markup-compatibility/2006}"
TEXT = "{urn:oasis:names:tc:opendocument:xmlns:text:1.0}"
OFFICE = "{urn:oasis:names:tc:opendocument:xmlns:office:1.0}"
XML_SPACE = "{http://www.w3.org/XML/1998/namespace}space"

_DOCX_PARTS = re.compile(r"word/(header\d*|footer\d*|footnotes|endnotes)\.xml")
_DOCX_GROUPS = frozenset(W + tag for tag in "hyperlink smartTag ins moveTo sdt sdtContent fldSimple customXml dir "
                                            "bdo".split())
# A run holding one of these is kept whole: its text is a field's instruction, or sits beside a picture.
_DOCX_OPAQUE = frozenset([W + tag for tag in "drawing pict object fldChar instrText delInstrText ruby".split()]
                         + [MC + "AlternateContent"])
_DOCX_BREAKS = frozenset(W + tag for tag in ("tab", "br", "cr", "ptab"))
_ODT_GROUPS = frozenset(TEXT + tag for tag in ("span", "a", "meta"))
_ODT_BREAKS = frozenset(TEXT + tag for tag in ("s", "tab", "line-break"))
_SPACES = re.compile(r"[ \t\r\n]+")  # ODF collapses white space in text to one space


@dataclass(eq=False)
class _Node:
    """What a mark stands for. kind: "point" (written back untouched), "run" (a docx run: text in w:t between
    its points), "span" (odt: text in the element's text and its children's tails), "group" (no text of its
    own). `own`: the translation's characters of its own range go into it (else to a neighbour's place)."""

    element: etree._Element
    kind: str
    own: bool = False
    separator: bool = False  # a space was put before this point into the block's text (see `_point`)


class _Text:
    """A block's text as it is read."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0

    def add(self, text: Optional[str]) -> bool:
        if text:
            self.parts.append(text)
            self.length += len(text)
        return bool(text)

    def ends_in_word(self) -> bool:
        return bool(self.parts) and not self.parts[-1][-1].isspace()


@dataclass(eq=False)
class _Slot:
    """One piece of a paragraph in document order: a point (k None), or the k-th stretch of text of `node`."""

    node: _Node
    k: Optional[int]
    text: str = ""

    @property
    def place(self) -> bool:
        return self.k is not None and self.node.own


class OfficeDocument:
    """A .docx or .odt file: `blocks()` to translate, then `render(results)` for the translated file's bytes."""

    def __init__(self, data: bytes, kind: str) -> None:
        if kind not in ("docx", "odt"):
            raise DataError(f"unknown office format {kind!r}; this translates docx or odt files")
        self.kind, self._data = kind, data
        self._parts: dict[str, etree._Element] = {}  # the parsed parts that have blocks
        self._paragraphs: list[tuple[Block, _Node]] = []
        with _open(data, kind) as archive:
            for name in _text_parts(archive, kind):
                root = _parse(archive, name, kind)
                found = [paragraph for paragraph in map(_read_paragraph, _paragraphs(root, name))
                         if paragraph is not None]
                if found:
                    self._parts[name] = root
                    self._paragraphs += found

    def blocks(self) -> list[Block]:
        """What to translate: every paragraph with text, in document order (main part first)."""
        return [block for block, _ in self._paragraphs]

    def render(self, results: Sequence[tuple[str, list[Mark]]]) -> bytes:
        """The file with `results` (translation and placed marks of each of `blocks()`, in order) in place."""
        assert len(results) == len(self._paragraphs)
        for (block, root), (text, marks) in zip(self._paragraphs, results):
            if block.marks and not marks:  # a caller that placed no marks: keep the runs, empty at the start
                marks = project(block, text, [])
            _write_paragraph(Mark(0, len(text), list(marks), node=root), text)
        changed = {name: _serialize(root) for name, root in self._parts.items()}
        return _rezip(self._data, changed)


def _open(data: bytes, kind: str) -> zipfile.ZipFile:
    """The zip archive, checked to be a document of `kind` and not a zip bomb."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError):
        raise DataError(f"not a .{kind} file (not a zip archive); give a file saved as .{kind}") from None
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS or sum(info.file_size for info in infos) > MAX_UNCOMPRESSED:
        raise DataError(f"the .{kind} file unpacks to over {MAX_MEMBERS:,} members or {MAX_UNCOMPRESSED:,} bytes; "
                        f"this translates smaller documents")
    names = set(archive.namelist())
    if kind == "docx" and "word/document.xml" not in names:
        raise DataError("not a .docx file (it has no word/document.xml); give a Word document saved as .docx")
    if kind == "odt":
        mimetype = _member(archive, "mimetype", kind).decode("ascii", "replace").strip() if "mimetype" in names else ""
        if "content.xml" not in names or mimetype != ODT_MIMETYPE:
            raise DataError(f"not an .odt text document (mimetype {mimetype or 'missing'}, or no content.xml); give "
                            f"a file saved as OpenDocument text")
    return archive


def _member(archive: zipfile.ZipFile, name: str, kind: str) -> bytes:
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError, EOFError, OSError) as exc:
        raise DataError(f"{name} in the .{kind} file cannot be unpacked ({exc}); save the file again") from None


def _text_parts(archive: zipfile.ZipFile, kind: str) -> list[str]:
    names = archive.namelist()
    if kind == "docx":
        return ["word/document.xml"] + sorted(name for name in set(names) if _DOCX_PARTS.fullmatch(name))
    return ["content.xml"] + (["styles.xml"] if "styles.xml" in names else [])


def _parse(archive: zipfile.ZipFile, name: str, kind: str) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        return etree.fromstring(_member(archive, name, kind), parser)
    except etree.XMLSyntaxError as exc:
        raise DataError(f"{name} in the .{kind} file is not well-formed XML ({exc}); save the file again") from None


def _paragraphs(root: etree._Element, name: str) -> list[etree._Element]:
    if name.startswith("word/"):
        return list(root.iter(W + "p"))
    if name == "styles.xml":  # only the page headers and footers there hold text to translate
        return [p for master in root.iter(OFFICE + "master-styles") for p in master.iter(TEXT + "p", TEXT + "h")]
    return list(root.iter(TEXT + "p", TEXT + "h"))


def _read_paragraph(paragraph: etree._Element) -> Optional[tuple[Block, _Node]]:
    """The paragraph's block and the node standing for the paragraph itself; None if it has no text."""
    out = _Text()
    if paragraph.tag == W + "p":
        marks, root = _docx_marks(paragraph, out), _Node(paragraph, "group")
    else:
        marks, own = _odt_marks(paragraph, out)
        root = _Node(paragraph, "span", own)
    text = "".join(out.parts)
    return (Block(text, marks), root) if text.strip() else None


def _point(element: etree._Element, out: _Text, breaks: bool) -> Mark:
    """A zero-width mark. A tab or break right after a word also puts a space into the text, so that the words
    either side stay apart for the model; `_write_paragraph` takes one out again beside the point."""
    separator = breaks and out.ends_in_word()
    if separator:
        out.add(" ")
    return Mark(out.length, out.length, node=_Node(element, "point", separator=separator))


def _docx_marks(parent: etree._Element, out: _Text) -> list[Mark]:
    marks = []
    for child in parent:
        start = out.length
        if child.tag == W + "pPr":
            continue
        parts = [part for part in child if part.tag != W + "rPr"] if child.tag == W + "r" else []
        tags = {part.tag for part in parts}
        if W + "t" in tags and not tags & _DOCX_OPAQUE:
            points = []
            for part in parts:
                if part.tag == W + "t":
                    out.add(part.text)
                else:
                    points.append(_point(part, out, part.tag in _DOCX_BREAKS))
            marks.append(Mark(start, out.length, points, node=_Node(child, "run", own=True)))
        elif child.tag in _DOCX_GROUPS:
            inner = _docx_marks(child, out)
            marks.append(Mark(start, out.length, inner, node=_Node(child, "group")))
        else:  # a run without text (a tab, a picture, a field character), a bookmark, a deletion, ...
            marks.append(_point(child, out, bool(tags) and tags <= _DOCX_BREAKS))
    return marks


def _odt_marks(parent: etree._Element, out: _Text) -> tuple[list[Mark], bool]:
    """The marks of `parent`'s children, and whether it holds text of its own (its text or a child's tail)."""
    own = out.add(_SPACES.sub(" ", parent.text or ""))
    marks = []
    for child in parent:
        start = out.length
        if child.tag in _ODT_GROUPS:
            inner, inner_own = _odt_marks(child, out)
            marks.append(Mark(start, out.length, inner, node=_Node(child, "span", inner_own)))
        else:  # a space, tab or line break, a frame, a note (its paragraphs are blocks of their own), a field, ...
            marks.append(_point(child, out, child.tag in _ODT_BREAKS))
        own = out.add(_SPACES.sub(" ", child.tail or "")) or own
    return marks, own


def _flatten(mark: Mark, target: str, slots: list[_Slot]) -> None:
    """`mark`'s points and stretches of text (before, between and after its children) in document order."""
    node: _Node = mark.node
    if node.kind == "point":
        slots.append(_Slot(node, None))
        return
    cursor = mark.start
    for k, child in enumerate(mark.children):
        slots.append(_Slot(node, k, target[cursor:child.start]))
        _flatten(child, target, slots)
        cursor = child.end
    slots.append(_Slot(node, len(mark.children), target[cursor:mark.end]))


def _write_paragraph(root: Mark, target: str) -> None:
    """Write `target` into the paragraph, each place the characters of its range (see the module's docstring)."""
    slots: list[_Slot] = []
    _flatten(root, target, slots)
    places = [i for i, slot in enumerate(slots) if slot.place]
    if not places:
        return
    prepends = []
    for i, slot in enumerate(slots):
        if slot.k is None or slot.place or not slot.text:
            continue
        at = bisect.bisect(places, i)
        before, after = (places[at - 1] if at else None), (places[at] if at < len(places) else None)
        if before is not None and (before == i - 1 or after != i + 1):  # the preceding place, unless only the next
            slots[before].text += slot.text                             # is right beside it
        else:
            prepends.append((after, slot.text))
    for after, text in reversed(prepends):
        slots[after].text = text + slots[after].text
    for i, slot in enumerate(slots):
        if slot.k is None and slot.node.separator:
            at = bisect.bisect(places, i)
            after, before = (slots[places[at]] if at < len(places) else None), (slots[places[at - 1]] if at else None)
            if after is not None and after.text[:1].isspace():
                after.text = after.text[1:]
            elif before is not None and before.text[-1:].isspace():
                before.text = before.text[:-1]
    texts: dict[int, tuple[_Node, list[str]]] = {}
    for slot in slots:
        if slot.place:
            texts.setdefault(id(slot.node), (slot.node, []))[1].append(slot.text)
    for node, strings in texts.values():
        (_write_run if node.kind == "run" else _write_span)(node.element, strings)


def _write_run(run: etree._Element, strings: list[str]) -> None:
    """A docx run rebuilt: its properties, then its text between its points (tabs, breaks) as new w:t."""
    points = [part for part in run if part.tag not in (W + "rPr", W + "t")]
    for part in list(run):
        if part.tag != W + "rPr":
            run.remove(part)
    for k, text in enumerate(strings):
        if k:
            run.append(points[k - 1])
        if text:
            element = etree.SubElement(run, W + "t")
            element.text = text
            if text[0].isspace() or text[-1].isspace():  # else Word drops the space
                element.set(XML_SPACE, "preserve")


def _write_span(element: etree._Element, strings: list[str]) -> None:
    """An odt paragraph or span: its text, then each child's tail."""
    element.text = strings[0] or None
    for child, text in zip(element, strings[1:]):
        child.tail = text or None


def _serialize(root: etree._Element) -> bytes:
    tree = root.getroottree()
    return etree.tostring(tree, xml_declaration=True, encoding="UTF-8", standalone=tree.docinfo.standalone)


def _rezip(data: bytes, changed: dict[str, bytes]) -> bytes:
    """The archive again, member by member in its order and compression, with the `changed` parts replaced."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            copy = zipfile.ZipInfo(info.filename, info.date_time)
            copy.compress_type, copy.external_attr, copy.comment = info.compress_type, info.external_attr, info.comment
            copy.create_system = info.create_system
            target.writestr(copy, changed[info.filename] if info.filename in changed else source.read(info))
        target.comment = source.comment
    return out.getvalue()
