"""A small, safe reader for the YAML that training configs are written in.

PyYAML is not a dependency of memfit's core, and these files use a flat subset: block
mappings and sequences by indentation (a sequence may sit at its key's own indent), ``- key:
value`` items, flow lists and maps (``[q_proj, v_proj]``, ``{}``), quoted and plain scalars
(YAML 1.2 core schema: ``true``/``false``, ``null``/``~``, integers, floats), ``|``/``>``
block scalars and comments. Anchors, aliases, tags and several documents are refused with the
line they are on, never guessed. Nothing is executed: every value is a str, int, float, bool,
None, list or dict.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import MemfitError

__all__ = ["loads"]

_KEY = re.compile(r"""^(?P<key>"[^"]*"|'[^']*'|[^\s"'#\-\[{][^:#]*?|-[^\s:#][^:#]*?)"""
                  r"""\s*:(?:\s+|$)""")
_INT = re.compile(r"^[-+]?(0|[1-9][0-9_]*)$")
_FLOAT = re.compile(r"^[-+]?(\d[\d_]*)?\.?\d*([eE][-+]?\d+)?$")
_MAX_DEPTH = 64
_Line = tuple[int, str, int]  # (indent, content, line number)


def _error(no: int, why: str) -> MemfitError:
    return MemfitError(f"yaml line {no}: {why}; allowed: the YAML subset of training configs "
                       "(mappings, lists, scalars, comments)", field=f"yaml line {no}",
                       value=None, allowed="plain YAML")


def _strip_comment(text: str) -> str:
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'" and (i == 0 or text[i - 1] in " \t:[{,-"):
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
    return text.rstrip()


def _lines(text: str) -> list[tuple[int, str, int, str]]:
    out: list[tuple[int, str, int, str]] = []
    for no, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[:len(raw) - len(raw.lstrip())]:
            raise _error(no, "a tab in the indentation")
        content = _strip_comment(raw.strip())
        if content in ("---", "..."):
            if out:
                raise _error(no, "a second document")
            continue
        if content:
            out.append((len(raw) - len(raw.lstrip(" ")), content, no, raw))
    return out


def scalar(text: str, no: int = 0) -> Any:
    """A plain or quoted scalar, or a flow list/map."""
    text = text.strip()
    if not text:
        return None
    if text[0] in "&*!" or text.startswith("<<"):
        raise _error(no, f"anchors, aliases, tags and merges are not read ({text[:20]!r})")
    if text[0] in "[{":
        value, rest = _flow(text, 0, no)
        if text[rest:].strip():
            raise _error(no, f"text after a flow collection ({text[rest:]!r})")
        return value
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        body = text[1:-1]
        return body.replace("''", "'") if text[0] == "'" else body.replace('\\"', '"')
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "~"):
        return None
    if _INT.match(text) and len(text) <= 40:
        return int(text.replace("_", ""))
    if any(c.isdigit() for c in text) and _FLOAT.match(text) and len(text) <= 40:
        try:
            return float(text.replace("_", ""))
        except ValueError:  # "e-4": no mantissa, a plain string
            return text
    return text


def _flow(text: str, i: int, no: int, depth: int = 0) -> tuple[Any, int]:
    """A flow collection starting at ``text[i]`` (``[`` or ``{``): (value, end index)."""
    if depth > _MAX_DEPTH:
        raise _error(no, "flow collections nested too deep")
    close = "]" if text[i] == "[" else "}"
    items: list[Any] = []
    i += 1
    start = i
    while i < len(text):
        ch = text[i]
        if ch in "[{":
            value, i = _flow(text, i, no, depth + 1)
            items.append(value)
            start = i
            continue
        if ch in "\"'":
            end = text.find(ch, i + 1)
            if end < 0:
                raise _error(no, "an unclosed quote")
            i = end + 1
            continue
        if ch in ",]}":
            piece = text[start:i].strip()
            if piece:
                items.append(piece)
            if ch == ",":
                i += 1
                start = i
                continue
            if ch != close:
                raise _error(no, f"{ch!r} closes a {'list' if close == ']' else 'map'}")
            return _flow_value(items, close, no), i + 1
        i += 1
    raise _error(no, f"an unclosed {'list' if close == ']' else 'map'}")


def _flow_value(items: list[Any], close: str, no: int) -> Any:
    if close == "]":
        return [scalar(x, no) if isinstance(x, str) else x for x in items]
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str) or ":" not in item:
            raise _error(no, f"a flow map entry without a key ({item!r})")
        key, _, value = item.partition(":")
        out[str(scalar(key, no))] = scalar(value, no)
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.lines = _lines(text)
        self.i = 0

    def block(self, indent: int, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise _error(self.lines[self.i][2], "nested too deep")
        content = self.lines[self.i][1]
        if content == "-" or content.startswith("- "):
            return self.seq(indent, depth)
        return self.map(indent, depth)

    def map(self, indent: int, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while self.i < len(self.lines):
            ind, content, no, _ = self.lines[self.i]
            if ind < indent:
                break
            if ind > indent:
                raise _error(no, "unexpected indentation")
            if content == "-" or content.startswith("- "):
                break
            m = _KEY.match(content)
            if not m:
                raise _error(no, f"expected 'key: value', got {content[:40]!r}")
            key = str(scalar(m["key"], no))
            if key in out:
                raise _error(no, f"the key {key!r} twice")
            rest = content[m.end():].strip()
            self.i += 1
            out[key] = self.value(rest, indent, no, depth)
        return out

    def value(self, rest: str, indent: int, no: int, depth: int) -> Any:
        nxt = self.lines[self.i] if self.i < len(self.lines) else None
        if rest[:1] in ("|", ">"):
            return self.block_scalar(indent, rest[0] == ">")
        if rest:
            return scalar(rest, no)
        if nxt is None:
            return None
        if nxt[0] > indent:
            return self.block(nxt[0], depth + 1)
        if nxt[0] == indent and (nxt[1] == "-" or nxt[1].startswith("- ")):
            return self.seq(indent, depth + 1)
        return None

    def block_scalar(self, indent: int, folded: bool) -> str:
        parts = []
        while self.i < len(self.lines) and self.lines[self.i][0] > indent:
            parts.append(self.lines[self.i][3].strip())
            self.i += 1
        return (" " if folded else "\n").join(parts)

    def seq(self, indent: int, depth: int) -> list[Any]:
        out: list[Any] = []
        while self.i < len(self.lines):
            ind, content, no, raw = self.lines[self.i]
            if ind != indent or not (content == "-" or content.startswith("- ")):
                if ind > indent:
                    raise _error(no, "unexpected indentation")
                break
            item = content[1:].strip()
            if not item:
                self.i += 1
                nxt = self.lines[self.i] if self.i < len(self.lines) else None
                out.append(self.block(nxt[0], depth + 1) if nxt and nxt[0] > indent else None)
                continue
            if _KEY.match(item) or item.startswith("- "):
                # "- key: value": a map (or list) whose first line starts after "- "
                offset = ind + (len(content) - len(item))
                self.lines[self.i] = (offset, item, no, raw)
                out.append(self.block(offset, depth + 1))
                continue
            self.i += 1
            out.append(scalar(item, no))
        return out


def loads(text: str) -> Any:
    """Parse ``text`` (the subset above); an empty document is an empty dict."""
    parser = _Parser(text)
    if not parser.lines:
        return {}
    first = parser.lines[0]
    if first[0] != 0:
        raise _error(first[2], "the document starts indented")
    if not (_KEY.match(first[1]) or first[1] == "-" or first[1].startswith("- ")):
        return scalar(first[1], first[2])
    value = parser.block(0, 0)
    if parser.i < len(parser.lines):
        raise _error(parser.lines[parser.i][2], "unexpected indentation")
    return value
