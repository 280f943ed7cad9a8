"""HTML translated in place: text and human-readable attributes translated, everything else left as it was.

The standard library's `html.parser` reads the document into a tree of our own (`Element`, `Text`,
`Raw`), closing what HTML closes by itself (a `<p>` at the next block, an `<li>` at the next item)
and whatever is left open at the end. Each run of inline content (text with `<b>`, `<a>`, `<img>`,
... inside a block element) is one `Block` to translate, its inline elements the marks carried
across (`nmt.documents.markup`); a top-level `<br>` ends a run. `title`, `alt`, `placeholder` and
`aria-label` are translated as blocks of their own. `<script>`, `<style>`, `<pre>`, `<textarea>`,
`<svg>`, `<math>`, `<template>` and anything marked `translate="no"` or `class="notranslate"` are
left untouched, and `<code>`, `<kbd>` and `<samp>` inside a sentence keep their content (the sentence
around them is translated with them in it, for context). Start tags, comments and untouched text
are written back byte for byte; translated text is escaped; every element left open is closed, so
the output is well formed and parses to the same element tree.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Optional, Sequence, Union

from nmt.documents.markup import Block, Mark
from nmt.errors import DataError

MAX_DEPTH = 256  # elements nested deeper than this are refused: no real page comes near it
VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
INLINE = frozenset("a abbr b bdi bdo big cite data del dfn em font i ins label mark q s small span strike strong "
                   "sub sup time tt u var code kbd samp img wbr input".split())
OPAQUE_INLINE = frozenset("code kbd samp".split())
UNTOUCHED = frozenset("script style pre textarea svg math template noscript iframe object canvas".split())
TRANSLATED_ATTRIBUTES = ("title", "alt", "placeholder", "aria-label")
_BLOCK_CLOSES_P = frozenset("address article aside blockquote details div dl fieldset figcaption figure footer form "
                            "h1 h2 h3 h4 h5 h6 header hr main menu nav ol p pre section table ul".split())
_CLOSED_BY = {"li": {"li"}, "dt": {"dt", "dd"}, "dd": {"dt", "dd"}, "tr": {"tr"}, "td": {"td", "th", "tr"},
              "th": {"td", "th", "tr"}, "option": {"option", "optgroup"}, "thead": {"tbody", "tfoot"},
              "tbody": {"tbody", "tfoot"}}
_SPACE = re.compile(r"[ \t\n\r\f]+")


@dataclass(eq=False)
class Text:
    raw: str  # as written in the document (entities included)
    text: str  # what it says (entities decoded)


@dataclass(eq=False)
class Raw:
    raw: str  # a comment, a doctype, a processing instruction: written back as it was


@dataclass(eq=False)
class Element:
    tag: Optional[str]  # None: the document's root
    attrs: list[tuple[str, Optional[str]]] = field(default_factory=list)
    raw: str = ""  # the start tag as written
    children: list["Node"] = field(default_factory=list)
    closed_in_tag: bool = False  # <x/>: no end tag written

    @property
    def untouched(self) -> bool:
        attrs = dict(self.attrs)
        return (self.tag in UNTOUCHED or (attrs.get("translate") or "").lower() == "no"
                or "notranslate" in (attrs.get("class") or "").split())


Node = Union[Text, Raw, Element]


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.root = Element(None)
        self.stack = [self.root]

    def _add(self, node: Node) -> None:
        children = self.stack[-1].children
        if isinstance(node, Text) and children and isinstance(children[-1], Text):
            children[-1].raw += node.raw
            children[-1].text += node.text
        else:
            children.append(node)

    def handle_starttag(self, tag: str, attrs: list, closed: bool = False) -> None:
        self._close_implied(tag)
        element = Element(tag, attrs, self.get_starttag_text() or f"<{tag}>", closed_in_tag=closed)
        self._add(element)
        if tag not in VOID and not closed:
            if len(self.stack) > MAX_DEPTH:
                raise DataError(f"HTML nested deeper than {MAX_DEPTH} elements; this translates documents nested "
                                f"less deeply")
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.handle_starttag(tag, attrs, closed=True)

    def _close_implied(self, tag: str) -> None:
        """Close what a start tag closes in HTML: a paragraph before a block, a list item before the next."""
        for depth in range(len(self.stack) - 1, 0, -1):
            open_tag = self.stack[depth].tag
            if (open_tag == "p" and tag in _BLOCK_CLOSES_P) or tag in _CLOSED_BY.get(open_tag or "", ()):
                del self.stack[depth:]
                return
            if open_tag in ("ul", "ol", "table", "dl", "select", "div"):  # not past the list, table or block it is in
                return

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return  # an end tag with no element open is dropped

    def handle_data(self, data: str) -> None:
        self._add(Text(data, data))

    def handle_entityref(self, name: str) -> None:
        raw = f"&{name};"
        self._add(Text(raw, html.unescape(raw)))

    def handle_charref(self, name: str) -> None:
        raw = f"&#{name};"
        self._add(Text(raw, html.unescape(raw)))

    def handle_comment(self, data: str) -> None:
        self._add(Raw(f"<!--{data}-->"))

    def handle_decl(self, decl: str) -> None:
        self._add(Raw(f"<!{decl}>"))

    def handle_pi(self, data: str) -> None:
        self._add(Raw(f"<?{data}>"))

    def unknown_decl(self, data: str) -> None:
        self._add(Raw(f"<![{data}]>"))


@dataclass(eq=False)
class _Run:
    parent: Element
    first: int  # children[first:last] of parent
    last: int
    block: Block
    lead: str
    trail: str


class HtmlDocument:
    """A parsed HTML document or fragment: `blocks()` to translate, then `render(results)`."""

    def __init__(self, source: str) -> None:
        builder = _TreeBuilder()
        builder.feed(source)
        builder.close()
        self.root = builder.root
        self._runs: list[_Run] = []
        self._attributes: list[tuple[Element, str]] = []
        self._inline: dict[int, bool] = {}
        self._collect(self.root)

    def blocks(self) -> list[Block]:
        """What to translate: each run of inline content, then each translatable attribute value."""
        return [run.block for run in self._runs] + [Block(dict(el.attrs)[name] or "") for el, name in self._attributes]

    def render(self, results: Sequence[tuple[str, list[Mark]]]) -> str:
        """The document with `results` (translation and placed marks of each of `blocks()`, in order) in place."""
        runs, attributes = results[:len(self._runs)], results[len(self._runs):]
        for (element, name), (text, _) in zip(self._attributes, attributes):
            element.attrs = [(key, text if key == name else value) for key, value in element.attrs]
            element.raw = _start_tag(element)
        for run, (text, marks) in sorted(zip(self._runs, runs), key=lambda item: -item[0].first):
            nodes: list[Node] = [Text(run.lead, run.lead)] if run.lead else []
            nodes += _nodes(text, marks, 0, len(text))
            nodes += [Text(run.trail, run.trail)] if run.trail else []
            run.parent.children[run.first:run.last] = nodes
        return serialize(self.root)

    def _is_inline(self, node: Node) -> bool:
        if not isinstance(node, Element):
            return True
        known = self._inline.get(id(node))
        if known is None:
            known = node.tag in INLINE and (node.tag in OPAQUE_INLINE or node.untouched or all(
                self._is_inline(child) and not (isinstance(child, Element) and child.tag == "br")
                for child in node.children))
            self._inline[id(node)] = known
        return known

    def _collect(self, container: Element) -> None:
        start: Optional[int] = None
        for index, child in enumerate(container.children + [None]):  # type: ignore[operator]
            inline = child is not None and self._is_inline(child) and not (isinstance(child, Element) and
                                                                            child.tag == "br")
            if inline and start is None:
                start = index
            if not inline and start is not None:
                self._add_run(container, start, index)
                start = None
            if isinstance(child, Element):
                self._attributes += [(child, name) for name, value in child.attrs
                                     if name in TRANSLATED_ATTRIBUTES and value and value.strip() and not child.untouched]
                if not inline and not child.untouched:
                    self._collect(child)

    def _add_run(self, parent: Element, first: int, last: int) -> None:
        builder = _BlockBuilder()
        for node in parent.children[first:last]:
            builder.add(node)
        block, lead, trail = builder.finish()
        if not block.text.strip() or _only_opaque(block):
            return  # nothing to translate (whitespace, or code alone)
        self._runs.append(_Run(parent, first, last, block, lead, trail))


def _only_opaque(block: Block) -> bool:
    """Whether every word of the block is inside marks kept as they are (code alone: nothing to translate)."""
    kept = [False] * len(block.text)
    for mark in block.marks:
        if mark.opaque:
            kept[mark.start:mark.end] = [True] * (mark.end - mark.start)
    return all(k or ch.isspace() for k, ch in zip(kept, block.text))


class _BlockBuilder:
    """A run's text with its whitespace collapsed (as a browser shows it), and its inline elements as marks."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.space = True  # at the start, or after a space: another space is dropped
        self.lead: Optional[str] = None
        self.trail = " "  # the whitespace, as written, that ends the text so far
        self.top: list[Mark] = []
        self.open: list[Mark] = []

    def _text(self, text: str) -> None:
        if self.lead is None:
            stripped = text.lstrip(" \t\n\r\f")
            if not stripped:
                return
            self.lead = text[:len(text) - len(stripped)]
            text = stripped
        ending = text[len(text.rstrip(" \t\n\r\f")):]
        self.trail = ending or " "
        collapsed = _SPACE.sub(" ", text)
        if self.space and collapsed.startswith(" "):
            collapsed = collapsed[1:]
        if collapsed:
            self.parts.append(collapsed)
            self.length += len(collapsed)
            self.space = collapsed.endswith(" ")

    def _mark(self, mark: Mark) -> None:
        (self.open[-1].children if self.open else self.top).append(mark)

    def add(self, node: Node) -> None:
        if isinstance(node, Text):
            self._text(node.text)
        elif isinstance(node, Raw) or node.tag in VOID or node.closed_in_tag:
            self._mark(Mark(self.length, self.length, node=node))
        else:
            mark = Mark(self.length, self.length, opaque=node.tag in OPAQUE_INLINE or node.untouched, node=node)
            self._mark(mark)
            self.open.append(mark)
            for child in node.children:
                self.add(child)
            self.open.pop()
            mark.end = self.length

    def finish(self) -> tuple[Block, str, str]:
        text = "".join(self.parts)
        stripped = text.rstrip(" ")
        trail = self.trail if len(stripped) < len(text) else ""
        _clamp(self.top, len(stripped))
        return Block(stripped, self.top), self.lead or "", trail


def _clamp(marks: list[Mark], limit: int) -> None:
    for mark in marks:
        mark.start, mark.end = min(mark.start, limit), min(mark.end, limit)
        _clamp(mark.children, limit)


def _nodes(text: str, marks: Sequence[Mark], low: int, high: int) -> list[Node]:
    """Nodes for text[low:high] with the placed marks in it (their own elements, copied with new children)."""
    out: list[Node] = []
    cursor = low
    for mark in marks:
        if mark.start > cursor:
            out.append(_escaped(text[cursor:mark.start]))
        node = mark.node
        if isinstance(node, Element) and not mark.opaque and node.tag not in VOID and not node.closed_in_tag:
            node = Element(node.tag, node.attrs, node.raw, _nodes(text, mark.children, mark.start, mark.end))
        out.append(node)
        cursor = max(cursor, mark.end)
    if high > cursor:
        out.append(_escaped(text[cursor:high]))
    return out


def _escaped(text: str) -> Text:
    return Text(html.escape(text, quote=False), text)


def _start_tag(element: Element) -> str:
    parts = [f"<{element.tag}"]
    for name, value in element.attrs:
        parts.append(f" {name}" if value is None else f' {name}="{html.escape(value, quote=True)}"')
    return "".join(parts) + (" />" if element.raw.rstrip().endswith("/>") else ">")


def serialize(root: Element) -> str:
    """The tree as HTML (iteratively: depth costs no stack)."""
    out: list[str] = []
    todo: list[Union[Node, str]] = [root]
    while todo:
        node = todo.pop()
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, (Text, Raw)):
            out.append(node.raw)
        else:
            if node.tag is not None:
                out.append(node.raw)
            if node.tag is not None and node.tag not in VOID and not node.closed_in_tag:
                todo.append(f"</{node.tag}>")
            todo.extend(reversed(node.children))
    return "".join(out)


def element_tree(source: str) -> list:
    """The element tree's shape, as nested [tag, [children]] lists: what a translation must keep."""
    def shape(element: Element) -> list:
        return [[child.tag, shape(child)] for child in element.children if isinstance(child, Element)]
    return shape(HtmlDocument(source).root)
