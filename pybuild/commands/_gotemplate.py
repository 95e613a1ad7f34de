"""Go's text/template, as docker's ``--format`` and ``inspect -f`` use it (pure: no I/O)."""

from __future__ import annotations

from pybuild.errors import PybuildError

# One evaluator of Go's text/template, for `images`/`ps --format` and `inspect -f`: parsing as Go's
# text/template/parse does, executing as text/template's exec.go does on JSON-shaped data (dicts,
# lists, str, int, float, bool, None), with docker's template functions (docker/cli templates.go:
# json split join title lower upper pad truncate) and Go's builtins (and or not len index print
# println eq ne lt le gt ge).  What it does not implement (variables, define/template/block,
# break/continue, printf and the other builtins, complex numbers) is a UsageError at parse time.
#
# Values: ``MISSING`` is Go's invalid reflect.Value (a missing map key: printed ``<no value>``);
# ``None`` a nil interface (JSON null).  A few typed Go values let a caller show docker's struct
# types where scripts depend on them: GoMap (``map[string]string``: a missing key's ``index`` is
# ""), GoSlice (``[]string``, possibly nil: prints ``[]``), GoNil (a nil pointer: prints ``<nil>``),
# GoStruct (a struct's set fields plus the zero values of those the JSON leaves out).


class TemplateExecError(PybuildError):
    """A template failed on one object (as Go's ExecError: ``template: :1:2: executing ...``)."""


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()  # Go's invalid reflect.Value (zero Value): a missing map key, nil data
_NOFINAL = object()  # "no value piped in" (Go's missingVal)


class _EmptyStruct:
    __slots__ = ()

    def __repr__(self) -> str:
        return "struct{}{}"


EMPTY_STRUCT = _EmptyStruct()  # struct{}{}: the values of docker's ExposedPorts and Volumes maps


class GoMap(dict):
    """A Go map with string keys and typed values: ``elem`` "string" (``map[string]string``,
    docker's Labels) or "struct" (``map[string]struct{}``, ExposedPorts/Volumes).  ``index`` of a
    missing key gives the element's zero value; made from None it is a nil map (``map[]``,
    JSON ``null``)."""

    def __init__(self, data: dict | None = None, elem: str = "string"):
        super().__init__({k: (EMPTY_STRUCT if elem == "struct" else v) for k, v in (data or {}).items()})
        self.nil = data is None
        self.elem = elem

    def zero(self):
        return "" if self.elem == "string" else EMPTY_STRUCT


class GoSlice(list):
    """A Go ``[]string``; made from None it is a nil slice (prints ``[]``, JSON ``null``)."""

    def __init__(self, data: list | None = None):
        super().__init__(data or [])
        self.nil = data is None


class GoNil:
    """A nil pointer of Go type ``type`` (e.g. ``*container.Health``): prints ``<nil>``, JSON
    ``null``, false in ``if``; a field of it is an error, as in Go."""

    __slots__ = ("type",)

    def __init__(self, type_: str):
        self.type = type_

    def __repr__(self) -> str:
        return f"GoNil({self.type})"


class GoStruct(dict):
    """A Go struct seen through its JSON object: a field the object leaves out (or sets to null)
    but the struct has reads as ``zeros[field]`` (docker's ``{{.Config.User}}`` is "" for an image
    without a USER, not ``<no value>``).  JSON encodes only the object's own keys (the struct's
    ``omitempty``); otherwise it behaves as a map (printing, range, index)."""

    def __init__(self, data: dict, zeros: dict):
        super().__init__(data)
        self.zeros = zeros


def _go_type(v) -> str:
    """The Go type name pybuild's values stand for, for messages."""
    if v is None:
        return "interface {}"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, GoSlice):
        return "[]string"
    if isinstance(v, list):
        return "[]interface {}"
    if isinstance(v, GoMap):
        return "map[string]string" if v.elem == "string" else "map[string]struct {}"
    if isinstance(v, dict):
        return "map[string]interface {}"
    if isinstance(v, GoNil):
        return v.type
    if v is EMPTY_STRUCT:
        return "struct {}"
    return type(v).__name__


def _float_digits(f: float) -> tuple[bool, str, int]:
    """(negative, shortest decimal digits without trailing zeros, point position dp): |f| is
    0.DIGITS x 10^dp.  Python's repr and Go's strconv both give the shortest round-trip digits."""
    from decimal import Decimal

    sign, digits, exponent = Decimal(repr(f)).as_tuple()
    return bool(sign), "".join(map(str, digits)).rstrip("0"), len(digits) + exponent


def _e_form(ds: str, dp: int) -> str:
    exp = dp - 1
    return ds[0] + ("." + ds[1:] if len(ds) > 1 else "") + ("e-" if exp < 0 else "e+") + f"{abs(exp):02d}"


def _f_form(ds: str, dp: int) -> str:
    if dp <= 0:
        return "0." + "0" * -dp + ds
    if dp >= len(ds):
        return ds + "0" * (dp - len(ds))
    return ds[:dp] + "." + ds[dp:]


def _go_float(f: float) -> str:
    """fmt's %v of a float64: strconv's 'g' with the shortest digits, %e form when the exponent
    is below -4 or 6 and up (1e+06, 1.5e-05), else plain (100000, 0.0001)."""
    import math

    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    neg, ds, dp = _float_digits(f)
    out = _e_form(ds, dp) if dp - 1 < -4 or dp - 1 >= 6 else _f_form(ds, dp)
    return ("-" if neg else "") + out


def _json_float(f: float) -> str:
    """encoding/json's float64: plain digits, or %e form below 1e-6 and from 1e21 up (e-07 as e-7)."""
    import math
    import re

    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    neg, ds, dp = _float_digits(f)
    if abs(f) < 1e-6 or abs(f) >= 1e21:
        out = re.sub(r"e-0(\d)$", r"e-\1", _e_form(ds, dp))
    else:
        out = _f_form(ds, dp)
    return ("-" if neg else "") + out


def go_json(v) -> str:
    """docker's ``json`` template function: Go's encoding/json without HTML escaping (maps with
    sorted keys for Go maps, a GoStruct's own keys in order, nil slices/maps/pointers as null)."""
    import json

    if v is None or v is MISSING or isinstance(v, GoNil):
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        import math

        return "" if math.isnan(v) or math.isinf(v) else _json_float(v)  # Go: an error, empty output
    if isinstance(v, str):
        s = json.dumps(v.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), ensure_ascii=False)
        return s.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    if v is EMPTY_STRUCT:
        return "{}"
    if isinstance(v, list):
        if isinstance(v, GoSlice) and v.nil:
            return "null"
        return "[" + ",".join(go_json(x) for x in v) + "]"
    if isinstance(v, dict):
        if isinstance(v, GoMap) and v.nil:
            return "null"
        keys = sorted(v) if isinstance(v, GoMap) else list(v)
        return "{" + ",".join(go_json(str(k)) + ":" + go_json(v[k]) for k in keys) + "}"
    return json.dumps(str(v))


def go_fmt(v) -> str:
    """fmt's %v: strings as is, true/false, ints, floats as %g, nil as <nil>, ``[a b]``,
    ``map[k:v]`` with sorted keys."""
    if v is None or v is MISSING or isinstance(v, GoNil):
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, str):
        return v
    if v is EMPTY_STRUCT:
        return "{}"
    if isinstance(v, list):
        return "[" + " ".join(go_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{go_fmt(k)}:{go_fmt(v[k])}" for k in sorted(v, key=str)) + "]"
    return str(v)


def _truth(v) -> bool:
    """Go's isTrue (on an indirected value): the zero of each type is false; nil is false."""
    if v is None or v is MISSING or isinstance(v, GoNil):
        return False
    if v is EMPTY_STRUCT:
        return True
    return bool(v)


# -- parsing --------------------------------------------------------------------------------------

_SPACE = " \t\r\n"
_KEYWORDS = {"block", "break", "continue", "define", "else", "end", "if", "nil", "range", "template", "with"}
_UNSUPPORTED_BUILTINS = {"printf", "html", "js", "urlquery", "call", "slice"}
_KNOWN = ("{{.Field.Sub}}, {{.}}, {{json .X}}, functions json split join title lower upper pad truncate "
          "index len print println not and or eq ne lt le gt ge, {{if}}/{{else}}/{{with}}/{{range}}, "
          "{{/* */}}, {{- -}}")


class _ParseError(Exception):
    def __init__(self, message: str, pos: int, unsupported: bool = False):
        super().__init__(message)
        self.pos = pos
        self.unsupported = unsupported


class _Tok:
    __slots__ = ("typ", "val", "pos")

    def __init__(self, typ: str, val: str, pos: int):
        self.typ, self.val, self.pos = typ, val, pos

    def __str__(self) -> str:
        if self.typ == "eof":
            return "EOF"
        if self.typ in ("left", "right"):
            return "{{" if self.typ == "left" else "}}"
        if self.typ == "keyword":
            return f"<{self.val}>"
        return _go_quote(self.val)


def _go_quote(s: str) -> str:
    import json

    return json.dumps(s, ensure_ascii=False)


def _alnum(c: str) -> bool:
    return c == "_" or c.isalpha() or c.isdecimal()


def _lex(text: str) -> list[_Tok]:
    """Go's template lexer: text, {{ (with `{{- ` trimming the text before), the action's tokens,
    }} (with ` -}}` trimming the text after); comments are dropped."""
    out: list[_Tok] = []
    n = len(text)
    pos = 0

    def at_right(p: int) -> tuple[bool, bool]:
        if p + 1 < n and text[p] in _SPACE and text[p + 1] == "-" and text.startswith("}}", p + 2):
            return True, True
        return text.startswith("}}", p), False

    def at_terminator(p: int) -> bool:
        return p >= n or text[p] in _SPACE or text[p] in ".,|:)(" or text.startswith("}}", p)

    def skip_space(p: int) -> int:
        while p < n and text[p] in _SPACE:
            p += 1
        return p

    def scan_number(p: int) -> tuple[bool, int]:
        if p < n and text[p] in "+-":
            p += 1
        digits = "0123456789_"
        if p < n and text[p] == "0":
            p += 1
            if p < n and text[p] in "xX":
                digits, p = "0123456789abcdefABCDEF_", p + 1
            elif p < n and text[p] in "oO":
                digits, p = "01234567_", p + 1
            elif p < n and text[p] in "bB":
                digits, p = "01_", p + 1
        while p < n and text[p] in digits:
            p += 1
        if p < n and text[p] == ".":
            p += 1
            while p < n and text[p] in digits:
                p += 1
        if len(digits) == 11 and p < n and text[p] in "eE":
            p += 1
            if p < n and text[p] in "+-":
                p += 1
            while p < n and text[p] in "0123456789_":
                p += 1
        if len(digits) == 23 and p < n and text[p] in "pP":
            p += 1
            if p < n and text[p] in "+-":
                p += 1
            while p < n and text[p] in "0123456789_":
                p += 1
        if p < n and text[p] == "i":
            p += 1
        if p < n and _alnum(text[p]):
            return False, p + 1
        return True, p

    while True:
        x = text.find("{{", pos)
        if x < 0:
            if pos < n:
                out.append(_Tok("text", text[pos:], pos))
            out.append(_Tok("eof", "", n))
            return out
        p = x + 2
        trim_left = p + 1 < n and text[p] == "-" and text[p + 1] in _SPACE
        chunk = text[pos:x].rstrip(_SPACE) if trim_left else text[pos:x]
        if chunk:
            out.append(_Tok("text", chunk, pos))
        if trim_left:
            p += 2
        if text.startswith("/*", p):
            end = text.find("*/", p + 2)
            if end < 0:
                raise _ParseError("unclosed comment", x)
            p = end + 2
            delim, trim = at_right(p)
            if not delim:
                raise _ParseError("comment ends before closing delimiter", x)
            p += 4 if trim else 2
            pos = skip_space(p) if trim else p
            continue
        out.append(_Tok("left", "{{", x))
        depth = 0
        while True:
            delim, trim = at_right(p)
            if delim:
                if depth:
                    raise _ParseError("unclosed left paren", p)
                p += 4 if trim else 2
                out.append(_Tok("right", "}}", p))
                pos = skip_space(p) if trim else p
                break
            if p >= n:
                raise _ParseError("unclosed action", p)
            c = text[p]
            if c in _SPACE:
                q = skip_space(p)
                if text.startswith("-}}", q):
                    q -= 1  # the last space is the trim marker's: " -}}"
                if q > p:
                    out.append(_Tok("space", text[p:q], p))
                p = q
                continue
            if c == "=":
                raise _ParseError("variable assignment (=) is not supported", p, True)
            if c == ":":
                raise _ParseError("variables (:=) are not supported", p, True)
            if c == ",":
                raise _ParseError("variables in range (,) are not supported", p, True)
            if c == "$":
                raise _ParseError("variables ($) are not supported", p, True)
            if c == "|":
                out.append(_Tok("pipe", "|", p))
                p += 1
            elif c == "(":
                depth += 1
                out.append(_Tok("lparen", "(", p))
                p += 1
            elif c == ")":
                depth -= 1
                if depth < 0:
                    raise _ParseError("unexpected right paren", p)
                out.append(_Tok("rparen", ")", p))
                p += 1
            elif c == '"':
                q = p + 1
                while True:
                    if q >= n or text[q] == "\n":
                        raise _ParseError("unterminated quoted string", p)
                    if text[q] == "\\":
                        if q + 1 >= n or text[q + 1] == "\n":
                            raise _ParseError("unterminated quoted string", p)
                        q += 2
                        continue
                    if text[q] == '"':
                        break
                    q += 1
                out.append(_Tok("string", text[p:q + 1], p))
                p = q + 1
            elif c == "`":
                q = text.find("`", p + 1)
                if q < 0:
                    raise _ParseError("unterminated raw quoted string", p)
                out.append(_Tok("rawstring", text[p:q + 1], p))
                p = q + 1
            elif c == "'":
                q = p + 1
                while True:
                    if q >= n or text[q] == "\n":
                        raise _ParseError("unterminated character constant", p)
                    if text[q] == "\\":
                        q += 2
                        continue
                    if text[q] == "'":
                        break
                    q += 1
                out.append(_Tok("char", text[p:q + 1], p))
                p = q + 1
            elif c == "." and not (p + 1 < n and text[p + 1] in "0123456789"):
                if at_terminator(p + 1):
                    out.append(_Tok("dot", ".", p))
                    p += 1
                    continue
                q = p + 1
                while q < n and _alnum(text[q]):
                    q += 1
                if not at_terminator(q):
                    raise _ParseError(f"bad character {text[q]!r}", q)
                out.append(_Tok("field", text[p:q], p))
                p = q
            elif c in "+-.0123456789":
                ok, q = scan_number(p)
                if ok and q < n and text[q] in "+-":  # complex: 1+2i
                    ok, q = scan_number(q)
                    if ok and text[q - 1] == "i":
                        raise _ParseError("complex numbers are not supported", p, True)
                    ok = False
                if not ok:
                    raise _ParseError(f"bad number syntax: {_go_quote(text[p:q])}", p)
                if text[q - 1] == "i":
                    raise _ParseError("complex numbers are not supported", p, True)
                out.append(_Tok("number", text[p:q], p))
                p = q
            elif _alnum(c):
                q = p
                while q < n and _alnum(text[q]):
                    q += 1
                if not at_terminator(q):
                    raise _ParseError(f"bad character {text[q]!r}", q)
                word = text[p:q]
                typ = "keyword" if word in _KEYWORDS else "bool" if word in ("true", "false") else "ident"
                if word == "nil":
                    typ = "nil"
                out.append(_Tok(typ, word, p))
                p = q
            elif c.isascii() and c.isprintable():
                raise _ParseError(f"unexpected {_go_quote(c)} in command", p)
            else:
                raise _ParseError(f"unrecognized character in action: {c!r}", p)


def _unquote(tok: _Tok) -> str:
    """strconv.Unquote of a Go string literal ("..." with escapes, or `raw`, whose \\r go)."""
    s = tok.val
    if s[0] == "`":
        return s[1:-1].replace("\r", "")
    body, out, i = s[1:-1], bytearray(), 0
    quote = s[0]
    simple = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, quote: ord(quote)}
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        e = body[i + 1] if i + 1 < len(body) else ""
        if e in simple:
            out.append(simple[e])
            i += 2
        elif e == "x" and len(body) >= i + 4 and all(h in "0123456789abcdefABCDEF" for h in body[i + 2:i + 4]):
            out.append(int(body[i + 2:i + 4], 16))
            i += 4
        elif e in "01234567" and e and len(body) >= i + 4 and all(o in "01234567" for o in body[i + 1:i + 4]) \
                and int(body[i + 1:i + 4], 8) < 256:
            out.append(int(body[i + 1:i + 4], 8))
            i += 4
        elif e in ("u", "U") and e:
            width = 4 if e == "u" else 8
            h = body[i + 2:i + 2 + width]
            if len(h) != width or not all(x in "0123456789abcdefABCDEF" for x in h) or \
                    int(h, 16) > 0x10FFFF or 0xD800 <= int(h, 16) < 0xE000:
                raise _ParseError(f"invalid syntax: {s}", tok.pos)
            out += chr(int(h, 16)).encode()
            i += 2 + width
        else:
            raise _ParseError(f"invalid syntax: {s}", tok.pos)
    return out.decode("utf-8", "surrogateescape")


# nodes


class _Node:
    __slots__ = ("pos",)


class _Text(_Node):
    __slots__ = ("text",)

    def __init__(self, pos, text):
        self.pos, self.text = pos, text


class _Dot(_Node):
    __slots__ = ()

    def __init__(self, pos):
        self.pos = pos

    def __str__(self):
        return "."


class _Nil(_Node):
    __slots__ = ()

    def __init__(self, pos):
        self.pos = pos

    def __str__(self):
        return "nil"


class _Field(_Node):
    __slots__ = ("idents",)

    def __init__(self, pos, idents):
        self.pos, self.idents = pos, idents

    def __str__(self):
        return "".join("." + i for i in self.idents)


class _Ident(_Node):
    __slots__ = ("name",)

    def __init__(self, pos, name):
        self.pos, self.name = pos, name

    def __str__(self):
        return self.name


class _Chain(_Node):
    __slots__ = ("node", "fields")

    def __init__(self, pos, node, fields):
        self.pos, self.node, self.fields = pos, node, fields

    def __str__(self):
        s = str(self.node)
        if isinstance(self.node, _Pipe):
            s = f"({s})"
        return s + "".join("." + f for f in self.fields)


class _Lit(_Node):
    """A string, bool or number constant (``text`` as written)."""
    __slots__ = ("kind", "value", "text", "ival", "fval", "floaty")

    def __init__(self, pos, kind, value, text, ival=None, fval=None, floaty=False):
        self.pos, self.kind, self.value, self.text = pos, kind, value, text
        self.ival, self.fval, self.floaty = ival, fval, floaty

    def __str__(self):
        return self.text


class _Cmd(_Node):
    __slots__ = ("args",)

    def __init__(self, pos):
        self.pos, self.args = pos, []

    def __str__(self):
        return " ".join(f"({a})" if isinstance(a, _Pipe) else str(a) for a in self.args)


class _Pipe(_Node):
    __slots__ = ("cmds",)

    def __init__(self, pos):
        self.pos, self.cmds = pos, []

    def __str__(self):
        return " | ".join(str(c) for c in self.cmds)


class _Action(_Node):
    __slots__ = ("pipe", "src")

    def __init__(self, pos, pipe, src):
        self.pos, self.pipe, self.src = pos, pipe, src

    def __str__(self):
        return "{{" + str(self.pipe) + "}}"


class _Control(_Node):
    """``{{if}}``, ``{{with}}`` or ``{{range}}``: ``body`` and ``orelse`` are node lists."""
    __slots__ = ("kind", "pipe", "body", "orelse", "src")

    def __init__(self, pos, kind, pipe, body, orelse, src):
        self.pos, self.kind, self.pipe, self.body, self.orelse, self.src = pos, kind, pipe, body, orelse, src

    def __str__(self):
        s = "{{" + f"{self.kind} {self.pipe}" + "}}" + "".join(_node_text(n) for n in self.body)
        if self.orelse is not None:
            s += "{{else}}" + "".join(_node_text(n) for n in self.orelse)
        return s + "{{end}}"


def _node_text(n) -> str:
    return n.text if isinstance(n, _Text) else str(n)


def _number(tok: _Tok) -> _Lit:
    """Go's parse.newNumber for an int, float or character constant (ival: its int value if it
    has one, fval: its float64; floaty: written as a float, so a float64 where no type is known)."""
    import math

    text = tok.val
    if tok.typ == "char":
        value = _unquote(tok)
        if len(value) != 1:
            raise _ParseError(f"malformed character constant: {text}", tok.pos)
        return _Lit(tok.pos, "number", None, text, ival=ord(value), fval=float(ord(value)))
    body = text.lstrip("+-")
    digits = body.replace("_", "")
    prefix = body[:2].lower()
    ival = fval = None
    bad = _ParseError(f"illegal number syntax: {_go_quote(text)}", tok.pos)
    try:
        if prefix in ("0b", "0o") or (prefix == "0x" and "p" not in body.lower()):
            ival = int(body, 0)
        elif digits.isdigit():
            ival = int(digits, 8) if len(digits) > 1 and digits[0] == "0" else int(digits)
    except ValueError:
        raise bad from None
    if ival is not None:
        ival = -ival if text.startswith("-") else ival
        if not -(1 << 63) <= ival < (1 << 64):
            raise bad
        fval = float(ival)
    else:
        try:
            fval = float.fromhex(text.replace("_", "")) if prefix == "0x" else float(text.replace("_", ""))
        except ValueError:
            raise bad from None
        if math.isfinite(fval) and fval == int(fval) and -(1 << 63) <= fval < (1 << 63):
            ival = int(fval)
    hex_int = len(text) > 2 and text[0] == "0" and text[1] in "xX" and not any(c in text for c in "pP")
    floaty = not hex_int and any(c in text for c in ".eEpP")
    return _Lit(tok.pos, "number", None, text, ival=ival, fval=fval, floaty=floaty)


class _Parser:
    """Go's text/template/parse for the subset above: same grammar, same errors."""

    def __init__(self, text: str, funcs: dict):
        self.text = text
        self.toks = _lex(text)
        self.i = 0
        self.funcs = funcs

    def next(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def backup(self) -> None:
        self.i -= 1

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def next_non_space(self) -> _Tok:
        t = self.next()
        while t.typ == "space":
            t = self.next()
        return t

    def peek_non_space(self) -> _Tok:
        t = self.next_non_space()
        self.backup()
        return t

    def error(self, message: str, tok: _Tok | None = None, unsupported: bool = False):
        raise _ParseError(message, (tok or self.toks[max(self.i - 1, 0)]).pos, unsupported)

    def parse(self) -> list:
        root = []
        while self.peek().typ != "eof":
            n = self.text_or_action()
            if isinstance(n, str):  # {{end}} or {{else}} outside if/with/range
                self.error(f"unexpected {{{{{n.split('-')[0]}}}}}")
            root.append(n)
        return root

    def item_list(self):
        out = []
        while self.peek_non_space().typ != "eof":
            n = self.text_or_action()
            if n in ("end", "else", "else-if", "else-with"):
                return out, n
            out.append(n)
        self.error("unexpected EOF")

    def text_or_action(self):
        t = self.next_non_space()
        if t.typ == "text":
            return _Text(t.pos, t.val)
        if t.typ == "left":
            return self.action(t)
        self.error(f"unexpected {t} in input", t)

    def action(self, left: _Tok):
        t = self.next_non_space()
        if t.typ == "keyword":
            if t.val == "else":
                p = self.peek_non_space()
                if p.typ == "keyword" and p.val in ("if", "with"):
                    self.next_non_space()
                    return "else-" + p.val
                self.expect_right("else")
                return "else"
            if t.val == "end":
                self.expect_right("end")
                return "end"
            if t.val in ("if", "with", "range"):
                return self.control(t.val, left)
            if t.val in ("define", "template", "block", "break", "continue"):
                self.error(f"{{{{{t.val}}}}} is not supported", t, unsupported=True)
        self.backup()
        pipe = self.pipeline("command", "right")
        return _Action(t.pos, pipe, self.text[left.pos:self.toks[self.i - 1].pos])

    def expect_right(self, context: str) -> None:
        t = self.next_non_space()
        if t.typ != "right":
            self.error(f"unexpected {t} in {context}", t)

    def control(self, kind: str, left: _Tok, src: str | None = None) -> _Control:
        pipe = self.pipeline(kind, "right")
        src = src or self.text[left.pos:self.toks[self.i - 1].pos]
        body, nxt = self.item_list()
        orelse = None
        if nxt == "else":
            orelse, nxt = self.item_list()
            if nxt != "end":
                self.error(f"expected end; found {{{{{nxt.split('-')[0]}}}}}")
        elif nxt in ("else-if", "else-with"):
            if nxt != f"else-{kind}":  # {{else if}} only in an if, {{else with}} only in a with
                self.error(f"unexpected <{nxt[5:]}> in input")
            orelse = [self.control(kind, left, src="{{else " + kind + " ...}}")]
        return _Control(pipe.pos, kind, pipe, body, orelse, src)

    def pipeline(self, context: str, end: str) -> _Pipe:
        pipe = _Pipe(self.peek_non_space().pos)
        while True:
            t = self.next_non_space()
            if t.typ == end:
                if not pipe.cmds:
                    self.error(f"missing value for {context}", t)
                for i, c in enumerate(pipe.cmds[1:]):
                    if isinstance(c.args[0], (_Lit, _Dot, _Nil)):
                        self.error(f"non executable command in pipeline stage {i + 2}", t)
                return pipe
            if t.typ in ("bool", "char", "dot", "field", "ident", "number", "nil", "rawstring", "string", "lparen"):
                self.backup()
                pipe.cmds.append(self.command())
            else:
                self.error(f"unexpected {t} in {context}", t)

    def command(self) -> _Cmd:
        cmd = _Cmd(self.peek_non_space().pos)
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                cmd.args.append(operand)
            t = self.next()
            if t.typ == "space":
                continue
            if t.typ in ("right", "rparen"):
                self.backup()
            elif t.typ != "pipe":
                self.error(f"unexpected {t} in operand", t)
            break
        if not cmd.args:
            self.error("empty command")
        return cmd

    def operand(self):
        node = self.term()
        if node is None:
            return None
        if self.peek().typ == "field":
            pos = self.peek().pos
            fields = []
            while self.peek().typ == "field":
                fields.append(self.next().val[1:])
            if isinstance(node, _Field):
                return _Field(pos, node.idents + fields)
            if isinstance(node, (_Lit, _Nil, _Dot)):
                self.error(f"unexpected . after term {_go_quote(str(node))}")
            return _Chain(pos, node, fields)
        return node

    def term(self):
        t = self.next_non_space()
        if t.typ == "ident":
            if t.val not in self.funcs:
                if t.val in _UNSUPPORTED_BUILTINS:
                    self.error(f"function {t.val!r} is not supported", t, unsupported=True)
                self.error(f"function {_go_quote(t.val)} not defined", t)
            return _Ident(t.pos, t.val)
        if t.typ == "dot":
            return _Dot(t.pos)
        if t.typ == "nil":
            return _Nil(t.pos)
        if t.typ == "field":
            return _Field(t.pos, [t.val[1:]])
        if t.typ == "bool":
            return _Lit(t.pos, "bool", t.val == "true", t.val)
        if t.typ in ("number", "char"):
            return _number(t)
        if t.typ == "lparen":
            return self.pipeline("parenthesized pipeline", "rparen")
        if t.typ in ("string", "rawstring"):
            return _Lit(t.pos, "string", _unquote(t), t.val)
        self.backup()
        return None


# -- execution ------------------------------------------------------------------------------------

class _CallError(Exception):
    """A template function's error (Go: "error calling NAME: ...")."""


def _ii(v):
    """Go's indirectInterface: a nil interface is the invalid value."""
    return MISSING if v is None else v


def _kind(v) -> str:
    """Go's basicKind, or the reflect kind of a non-basic value."""
    if v is MISSING:
        return "invalid"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "slice"
    if isinstance(v, dict):
        return "map"
    if isinstance(v, GoNil):
        return "ptr"
    return "struct"


_BASIC = {"bool", "int", "float", "string"}


def _is_nil(v) -> bool:
    return v is MISSING or v is None or isinstance(v, GoNil) or (isinstance(v, (GoSlice, GoMap)) and v.nil)


def _f_eq(a, *bs):
    a = _ii(a)
    if not bs:
        raise _CallError("missing argument for comparison")
    k1 = _kind(a)
    for b in bs:
        b = _ii(b)
        k2 = _kind(b)
        if (k1 in _BASIC or k2 in _BASIC) and k1 != k2:
            if a is not MISSING and b is not MISSING:
                raise _CallError(f"incompatible types for comparison: {_go_type(a)} and {_go_type(b)}")
            truth = False
        elif k1 in _BASIC:
            truth = a == b
        else:
            if k1 != k2 and "invalid" not in (k1, k2):
                raise _CallError(f"non-comparable types {go_fmt(a)}: {_go_type(a)}, {_go_type(b)}: {go_fmt(b)}")
            if _is_nil(a) or _is_nil(b):
                truth = _is_nil(a) == _is_nil(b)
            elif k2 in ("slice", "map"):
                raise _CallError(f"non-comparable type {go_fmt(b)}: {_go_type(b)}")
            else:
                truth = a is b  # struct{}{} == struct{}{}
        if truth:
            return True
    return False


def _f_ne(a, b):
    return not _f_eq(a, b)


def _f_lt(a, b):
    a, b = _ii(a), _ii(b)
    k1, k2 = _kind(a), _kind(b)
    if k1 not in _BASIC or k2 not in _BASIC:
        raise _CallError("invalid type for comparison")
    if k1 != k2:
        raise _CallError(f"incompatible types for comparison: {_go_type(a)} and {_go_type(b)}")
    if k1 == "bool":
        raise _CallError("invalid type for comparison")
    return a < b


def _f_le(a, b):
    return _f_lt(a, b) or _f_eq(a, b)


def _f_gt(a, b):
    return not _f_le(a, b)


def _f_ge(a, b):
    return not _f_lt(a, b)


def _f_not(v):
    return not _truth(_ii(v))


def _f_len(v):
    if v is MISSING:
        raise _CallError("reflect: call of reflect.Value.Type on zero Value")
    if v is None or isinstance(v, GoNil):
        raise _CallError("len of nil pointer")
    if isinstance(v, str):
        return len(v.encode("utf-8", "surrogateescape"))
    if isinstance(v, (list, dict)):
        return len(v)
    raise _CallError(f"len of type {_go_type(v)}")


def _f_index(item, *indexes):
    item = _ii(item)
    if item is MISSING:
        raise _CallError("index of untyped nil")
    for index in indexes:
        index = _ii(index)
        if item is None or isinstance(item, GoNil):
            raise _CallError("index of nil pointer")
        if isinstance(item, (list, str)):
            if index is MISSING:
                raise _CallError("cannot index slice/array with nil")
            if isinstance(index, bool) or not isinstance(index, int):
                raise _CallError(f"cannot index slice/array with type {_go_type(index)}")
            seq = item.encode("utf-8", "surrogateescape") if isinstance(item, str) else item
            if index < 0 or index > len(seq):
                raise _CallError(f"index out of range: {index}")
            if index == len(seq):
                raise _CallError(f"reflect: {'string' if isinstance(item, str) else 'slice'} index out of range")
            item = seq[index]
        elif isinstance(item, dict):
            if index is MISSING:
                raise _CallError("value is nil; should be of type string")
            if not isinstance(index, str):
                raise _CallError(f"value has type {_go_type(index)}; should be string")
            item = item[index] if index in item else item.zero() if isinstance(item, GoMap) else None
        else:
            raise _CallError(f"can't index item of type {_go_type(item)}")
    return item


def _f_print(*args):
    out = []
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(go_fmt(a))
    return "".join(out)


def _f_println(*args):
    return " ".join(go_fmt(a) for a in args) + "\n"


def _go_separator(c: str) -> bool:
    """strings.Title's word separator: ASCII other than letters, digits and _; else a space."""
    if c.isascii():
        return not (c.isalnum() or c == "_")
    if c.isalpha() or c.isdecimal():
        return False
    return c.isspace()


def _go_title(s: str) -> str:
    """strings.Title: each word's first letter mapped to title case (one rune to one rune)."""
    out, prev = [], " "
    for c in s:
        t = c.title() if _go_separator(prev) else c
        out.append(t if len(t) == 1 else c)
        prev = c
    return "".join(out)


def _case(s: str, upper: bool) -> str:
    """strings.ToUpper/ToLower: Go maps each rune to one rune (no "ß" -> "SS"; "İ" -> "i")."""
    out = []
    for c in s:
        m = c.upper() if upper else c.lower()
        out.append(m if len(m) == 1 else c if upper else m[0])
    return "".join(out)


def _f_split(s, sep):
    return list(s) if sep == "" else s.split(sep)


def _f_pad(s, prefix, suffix):
    if s == "":
        return s
    if prefix < 0 or suffix < 0:
        raise _CallError("strings: negative Repeat count")
    return " " * prefix + s + " " * suffix


def _f_truncate(s, length):
    b = s.encode("utf-8", "surrogateescape")
    if len(b) < length:
        return s
    if length < 0:
        raise _CallError(f"runtime error: slice bounds out of range [:{length}]")
    return b[:length].decode("utf-8", "surrogateescape")


# name: (fixed parameter types, variadic element type or None, implementation).  Types: "any"
# (interface{}: nil for a missing value), "value" (reflect.Value: the value as it is), "string",
# "int", "[]string".
_FUNCS = {
    "json": (("any",), None, go_json),
    "split": (("string", "string"), None, _f_split),
    "join": (("[]string", "string"), None, lambda elems, sep: sep.join(elems)),
    "title": (("string",), None, _go_title),
    "lower": (("string",), None, lambda s: _case(s, False)),
    "upper": (("string",), None, lambda s: _case(s, True)),
    "pad": (("string", "int", "int"), None, _f_pad),
    "truncate": (("string", "int"), None, _f_truncate),
    "and": (("value",), "value", None),
    "or": (("value",), "value", None),
    "not": (("value",), None, _f_not),
    "len": (("value",), None, _f_len),
    "index": (("value",), "value", _f_index),
    "print": ((), "any", _f_print),
    "println": ((), "any", _f_println),
    "eq": (("value",), "value", _f_eq),
    "ne": (("value", "value"), None, _f_ne),
    "lt": (("value", "value"), None, _f_lt),
    "le": (("value", "value"), None, _f_le),
    "gt": (("value", "value"), None, _f_gt),
    "ge": (("value", "value"), None, _f_ge),
}


class _Exec:
    """One execution (Go's exec.go ``state``): walks the tree over ``data``."""

    def __init__(self, template: "GoTemplate"):
        self.t = template
        self.node = None
        self.out: list[str] = []

    def at(self, node) -> None:
        self.node = node

    def error(self, message: str):
        text = self.t.text
        pos = self.node.pos if self.node is not None else 0
        before = text[:pos]
        line = before.count("\n") + 1
        col = len(before[before.rfind("\n") + 1:].encode("utf-8", "surrogateescape"))
        raise TemplateExecError(f'template: :{line}:{col}: executing "" at <{self.node}>: {message}')

    # walking
    def walk(self, dot, nodes) -> None:
        for node in nodes:
            self.at(node)
            if isinstance(node, _Text):
                self.out.append(node.text)
            elif isinstance(node, _Action):
                v = self.pipeline(dot, node.pipe)
                self.at(node)
                self.out.append("<no value>" if v is MISSING else go_fmt(v))
            elif node.kind == "range":
                self.walk_range(dot, node)
            else:
                v = self.pipeline(dot, node.pipe)
                if _truth(v):
                    self.walk(v if node.kind == "with" else dot, node.body)
                elif node.orelse is not None:
                    self.walk(dot, node.orelse)

    def walk_range(self, dot, node: _Control) -> None:
        v = self.pipeline(dot, node.pipe)
        if isinstance(v, dict):
            items = [v[k] for k in sorted(v, key=str)]
        elif isinstance(v, list):
            items = list(v)
        elif isinstance(v, int) and not isinstance(v, bool):
            items = list(range(v))  # Go 1.22: range over an integer
        elif v is MISSING:
            items = []
        else:
            self.error(f"range can't iterate over {go_fmt(v)}")
        for item in items:
            self.walk(item, node.body)
        if not items and node.orelse is not None:
            self.walk(dot, node.orelse)

    # evaluation
    def pipeline(self, dot, pipe: _Pipe):
        self.at(pipe)
        value = _NOFINAL
        for cmd in pipe.cmds:
            value = self.command(dot, cmd, value)
            if value is None:  # an interface{} holding nil: Go digs into it, leaving the invalid value
                value = MISSING
        return value

    def not_a_function(self, args, final) -> None:
        if len(args) > 1 or final is not _NOFINAL:
            self.error(f"can't give argument to non-function {args[0]}")

    def command(self, dot, cmd: _Cmd, final):
        first = cmd.args[0]
        if isinstance(first, _Field):
            return self.field_node(dot, first, cmd.args, final)
        if isinstance(first, _Chain):
            return self.chain_node(dot, first, cmd.args, final)
        if isinstance(first, _Ident):
            return self.function(dot, first, cmd, cmd.args, final)
        if isinstance(first, _Pipe):
            self.not_a_function(cmd.args, final)
            return self.pipeline(dot, first)
        self.at(first)
        self.not_a_function(cmd.args, final)
        if isinstance(first, _Dot):
            return dot
        if isinstance(first, _Nil):
            self.error("nil is not a command")
        if first.kind == "number":
            return self.ideal_constant(first)
        return first.value

    def ideal_constant(self, lit: _Lit):
        self.at(lit)
        if lit.floaty and lit.fval is not None:
            return lit.fval
        if lit.ival is not None:
            if not -(1 << 63) <= lit.ival < (1 << 63):
                self.error(f"{lit.text} overflows int")
            return lit.ival
        self.error(f"{lit.text} overflows int")

    def field_node(self, dot, field: _Field, args, final):
        self.at(field)
        return self.field_chain(dot, field.idents, args, final)

    def chain_node(self, dot, chain: _Chain, args, final):
        self.at(chain)
        receiver = self.arg(dot, None, chain.node)
        return self.field_chain(receiver, chain.fields, args, final)

    def field_chain(self, receiver, idents, args, final):
        for name in idents[:-1]:
            receiver = self.field(name, None, _NOFINAL, receiver)
        return self.field(idents[-1], args, final, receiver)

    def field(self, name: str, args, final, receiver):
        if receiver is MISSING:
            return MISSING
        if receiver is None:
            self.error(f"nil pointer evaluating interface {{}}.{name}")
        if isinstance(receiver, GoNil):
            self.error(f"nil pointer evaluating {receiver.type}.{name}")
        has_args = (args is not None and len(args) > 1) or final is not _NOFINAL
        if isinstance(receiver, GoStruct) and (name in receiver or name in receiver.zeros):
            if has_args:
                self.error(f"{name} has arguments but cannot be invoked as function")
            value = receiver.get(name)
            return receiver.zeros[name] if value is None and name in receiver.zeros else value
        if isinstance(receiver, dict):
            if has_args:
                self.error(f"{name} is not a method but has arguments")
            if self.t.missing_key_error and name not in receiver:  # Go's Option("missingkey=error")
                self.error(f'map has no entry for key "{name}"')
            return receiver.get(name, MISSING)
        static = "interface {}" if type(receiver) in (str, int, float, bool, list) else _go_type(receiver)
        self.error(f"can't evaluate field {name} in type {static}")

    def function(self, dot, ident: _Ident, node, args, final):
        self.at(ident)
        name = ident.name
        fixed, variadic, impl = _FUNCS[name]
        args = list(args[1:]) if args is not None else []
        num_in = len(args) + (final is not _NOFINAL)
        if variadic is not None:
            if num_in < len(fixed):
                self.error(f"wrong number of args for {name}: want at least {len(fixed)} got {len(args)}")
        elif num_in != len(fixed):
            self.error(f"wrong number of args for {name}: want {len(fixed)} got {num_in}")
        if name in ("and", "or"):  # short-circuit: the first false (and) / true (or) argument, or the last
            v = MISSING
            for a in args:
                v = self.arg(dot, "value", a)
                if _truth(_ii(v)) == (name == "or"):
                    return v
            if final is not _NOFINAL:
                v = self.validate(final, "value")
            return v
        argv = []
        for i, a in enumerate(args):
            argv.append(self.arg(dot, fixed[i] if i < len(fixed) else variadic, a))
        if final is not _NOFINAL:
            argv.append(self.validate(final, fixed[num_in - 1] if num_in - 1 < len(fixed) else variadic))
        try:
            return impl(*argv)
        except _CallError as exc:
            self.at(node)
            self.error(f"error calling {name}: {exc}")

    def arg(self, dot, typ, n):
        self.at(n)
        if isinstance(n, _Dot):
            return self.validate(dot, typ)
        if isinstance(n, _Nil):
            if typ in ("any", None):
                return None
            if typ == "value":
                return MISSING
            if typ == "[]string":
                return GoSlice(None)
            self.error(f"cannot assign nil to {typ}")
        if isinstance(n, _Field):
            return self.validate(self.field_node(dot, n, [n], _NOFINAL), typ)
        if isinstance(n, _Pipe):
            return self.validate(self.pipeline(dot, n), typ)
        if isinstance(n, _Ident):
            return self.validate(self.function(dot, n, n, None, _NOFINAL), typ)
        if isinstance(n, _Chain):
            return self.validate(self.chain_node(dot, n, None, _NOFINAL), typ)
        # a constant
        if typ == "string":
            if n.kind == "string":
                return n.value
            self.error(f"expected string; found {n}")
        if typ == "int":
            if n.kind == "number" and n.ival is not None:
                return n.ival
            self.error(f"expected integer; found {n}")
        if typ == "[]string":
            self.error(f"can't handle {n} for arg of type []string")
        if n.kind == "number":
            return self.ideal_constant(n)
        return n.value

    def validate(self, v, typ):
        """Go's validateType: ``v`` as an argument of type ``typ``."""
        if typ is None:
            return v
        if v is MISSING:
            if typ == "any":
                return None
            if typ == "value":
                return MISSING
            if typ == "[]string":
                return GoSlice(None)
            self.error(f"invalid value; expected {typ}")
        if typ in ("any", "value"):
            return v
        if typ == "string" and isinstance(v, str):
            return v
        if typ == "int" and isinstance(v, int) and not isinstance(v, bool):
            return v
        if typ == "[]string" and isinstance(v, list) and (isinstance(v, GoSlice) or all(isinstance(x, str) for x in v)):
            return v  # docker's typed []string (a JSON list of strings)
        self.error(f"wrong type for value; expected {typ}; got {_go_type(v)}")


class GoTemplate:
    """A parsed Go template.  ``GoTemplate(text, flag)`` raises UsageError (naming ``flag``) for a
    syntax error or anything this implementation does not support, so before any output;
    ``execute(data)`` renders one object, raising TemplateExecError as Go's Execute fails.
    ``missing_key_error`` is Go's ``missingkey=error`` option: a map key that is not there fails
    the execution instead of printing ``<no value>`` (docker's inspect runs its templates so)."""

    def __init__(self, text: str, flag: str = "--format", shown: str | None = None, *,
                 missing_key_error: bool = False):
        from pybuild.errors import UsageError

        self.text = text
        self.missing_key_error = missing_key_error
        try:
            self.root = _Parser(text, _FUNCS).parse()
        except _ParseError as exc:
            where = text[:exc.pos].count("\n") + 1
            if exc.unsupported:
                raise UsageError(f"{flag} {shown or text!r}: {exc} (pybuild's templates know {_KNOWN})") from None
            raise UsageError(f"{flag} {shown or text!r}: template parsing error: template: :{where}: {exc}") from None

    def execute(self, data) -> str:
        ex = _Exec(self)
        ex.walk(data, self.root)
        return "".join(ex.out)


def field_names(template: GoTemplate) -> list[str]:
    """The first names of the fields the template reads from its top-level dot (``.ID`` in
    ``{{.ID}}``, ``{{if .ID}}``, ``{{json .Labels}}``), in order, for a caller that knows which
    fields its data has.  Inside ``with``/``range`` bodies dot is something else: not listed."""
    out: list[str] = []

    def arg(a) -> None:
        if isinstance(a, _Field) and a.idents:
            out.append(a.idents[0])
        elif isinstance(a, _Pipe):
            pipe(a)
        elif isinstance(a, _Chain):
            arg(a.node)

    def pipe(p) -> None:
        for cmd in p.cmds:
            for a in cmd.args:
                arg(a)

    def nodes(ns) -> None:
        for n in ns or []:
            if isinstance(n, _Action):
                pipe(n.pipe)
            elif isinstance(n, _Control):
                pipe(n.pipe)
                if n.kind == "if":
                    nodes(n.body)
                nodes(n.orelse)

    nodes(template.root)
    return list(dict.fromkeys(out))
