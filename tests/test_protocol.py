"""The protocol is named once per language: Python (onestock/domain/protocol.py, state/keys.py)
and Lua (state/lua/lib_protocol.lua). These tests hold the two to the same values, and
every script to the names instead of literals."""

from __future__ import annotations

import re

import pytest
from redis.commands.core import Script

from onestock.domain import protocol
from onestock.domain.protocol import Code, ProtocolError, code_of
from state import keys
from state.conn import lua
from state.store import Store
from tests.conftest import ROOT

LUA = ROOT / "state" / "lua"
DEF = re.compile(r"^local ([A-Z_]+) = '((?:[^'\\]|\\\d{1,3})*)'$")


def lua_string(text: str) -> str:
    """A Lua 5.1 single-quoted string's value (decimal escapes only, as the lib writes)."""
    return re.sub(r"\\(\d{1,3})", lambda m: chr(int(m.group(1))), text)


def lua_names() -> dict[str, str]:
    names: dict[str, str] = {}
    for line in (LUA / "lib_protocol.lua").read_text().splitlines():
        m = DEF.match(line)
        if m:
            assert m.group(1) not in names, f"{m.group(1)} defined twice in lib_protocol.lua"
            names[m.group(1)] = lua_string(m.group(2))
        else:
            assert line == "" or line.startswith("--"), f"not a definition: {line!r}"
    return names


def python_value(name: str) -> str:
    if name in Code.__members__:
        return Code[name].value
    if hasattr(protocol, name):
        return str(getattr(protocol, name))
    return str(getattr(keys, name))


def test_lua_names_equal_python_values() -> None:
    names = lua_names()
    assert len(names) > 35
    for name, value in names.items():
        assert value == python_value(name), name


def test_every_code_and_internal_field_has_a_lua_name() -> None:
    names = lua_names()
    assert set(Code.__members__) <= set(names)
    internal = {
        n for n, v in vars(keys).items() if n.isupper() and isinstance(v, str) and v[:1] == "\0"
    }
    assert internal <= set(names), internal - set(names)


def test_no_internal_field_literal_in_a_script() -> None:
    """A script names an internal field ('\\0...') only through lib_protocol.lua (comments
    may quote one)."""
    for path in sorted(LUA.glob("*.lua")):
        if path.name == "lib_protocol.lua":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("--", 1)[0]
            assert not re.search(r"'\\0|\"\\0", code), f"{path.name}:{n}: {line.strip()}"


@pytest.mark.parametrize("value", ["", "Z", "?", "a1"])
def test_an_unknown_code_raises(value: str) -> None:
    with pytest.raises(ProtocolError, match="unknown outcome code"):
        code_of(value)


def test_known_codes_decode() -> None:
    assert code_of("A\x1fL1\x1fS\x1f1") is Code.ACCEPTED
    assert code_of("R\x1fsold_out") is Code.REJECTED
    assert code_of("r") is Code.CAMPAIGN_REJECTED


# -- the scripts: names, not literals, and every one loads ----------------------------------

# A Lua comment to the end of its line, or a quoted string literal (escapes kept): the earliest
# match wins, so a quote inside a comment and "--" inside a string are read as they should be.
TOKEN = re.compile(r"--[^\n]*|'(?:\\.|[^'\\\n])*'|\"(?:\\.|[^\"\\\n])*\"")
ESCAPE = re.compile(r"\\(\d{1,3}|.)")
SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
CODE_BYTES = "|".join(str(ord(c)) for c in Code)
# a first byte compared with a code's number: byte(v, 1) == 72, 72 ~= string.byte(v)
BYTE_COMPARED = re.compile(
    rf"byte\([^()]*\)\s*[~=]=\s*(?:{CODE_BYTES})\b|\b(?:{CODE_BYTES})\s*[~=]=\s*[\w.]*byte\("
)


def unescape(m: re.Match[str]) -> str:
    e = m.group(1)
    return chr(int(e)) if e.isdigit() else SIMPLE.get(e, e)


def lua_value(literal: str) -> str:
    """A quoted Lua 5.1 string literal's value."""
    return ESCAPE.sub(unescape, literal[1:-1])


def lua_literals(text: str) -> list[tuple[int, str]]:
    """(line number, value) of every string literal outside comments (no script writes a
    long string or comment, [[...]]: test_no_code_or_separator_literal_in_a_script)."""
    found = []
    for m in TOKEN.finditer(text):
        if not m.group().startswith("--"):
            found.append((text.count("\n", 0, m.start()) + 1, lua_value(m.group())))
    return found


def lua_code(text: str) -> str:
    """The text without its comments, every string literal an empty one (lines kept)."""
    return TOKEN.sub(lambda m: "" if m.group().startswith("--") else "''", text)


def scripts() -> list[str]:
    return sorted(p.name for p in LUA.glob("*.lua") if p.name != "lib_protocol.lua")


@pytest.mark.parametrize("name", scripts())
def test_no_code_or_separator_literal_in_a_script(name: str) -> None:
    """A script names the outcome and registry codes and the separators only through
    lib_protocol.lua: no one-letter code literal ('A', "H", ...), no separator character in a
    literal ('\\31', '\\031', ...) nor made by string.char, no first byte compared with a
    code's number (byte(v, 1) == 72). Comments may quote them."""
    text = (LUA / name).read_text()
    assert "[[" not in text and "[=" not in text, f"{name}: a long string, unread here"
    for at, value in lua_literals(text):
        assert value not in set(Code), f"{name}:{at}: the code {value!r} as a literal"
        assert not set(value) & {protocol.SEP, protocol.RS, protocol.GS, protocol.BUCKET}, (
            f"{name}:{at}: a separator in the literal {value!r}"
        )
    code = lua_code(text)
    assert not re.search(r"string\.char\(\s*(?:2[89]|3[01])\s*\)", code), name
    for n, line in enumerate(code.splitlines(), 1):
        assert not BYTE_COMPARED.search(line), f"{name}:{n}: a code's byte: {line.strip()}"


def test_the_literal_checks_see_literals() -> None:
    """The checks above, on a text that breaks each rule (so they cannot pass by seeing
    nothing), and on one that only quotes them in comments."""
    bad = "return 'A' .. '\\31' .. x\nif byte(v, 1) == 72 then end -- 'H'\n"
    assert [v for _, v in lua_literals(bad)] == ["A", "\x1f"]
    assert "== 72" in lua_code(bad) and "'H'" not in lua_code(bad)
    assert BYTE_COMPARED.search(lua_code(bad)) and not BYTE_COMPARED.search("byte(v, 1) == 0")
    assert lua_literals("-- return 'A' .. '\\31'\nlocal s = '--'\n") == [(2, "--")]


# Scripts loaded as they are, not through state/conn.py lua() (no library prepended).
RAW = {"intake.lua"}  # intake/committer.py


def registered_scripts(store: Store) -> list[str]:
    """The text of every script the store's parts register, as they register it (libraries
    included), and of the RAW ones."""
    found = [(LUA / name).read_text() for name in sorted(RAW)]
    parts = [store, *(v for v in vars(store).values() if type(v).__module__.startswith("state."))]
    for part in parts:
        for v in vars(part).values():
            if isinstance(v, Script):
                found.append(v.script if isinstance(v.script, str) else bytes(v.script).decode())
    return found


def test_every_script_loads(store: Store) -> None:
    """Each script, as registered (lib_protocol.lua and its libraries prepended), compiles on
    the real Redis (SCRIPT LOAD): syntax, and Lua 5.1's limits (200 locals, 60 upvalues per
    function) that only the compiler sees; and every script file is registered."""
    texts = registered_scripts(store)
    for text in texts:
        store.r.script_load(text)
    for name in scripts():
        if not name.startswith("lib_"):
            body = (LUA / name).read_text()
            assert any(t.endswith(body) for t in texts), f"{name} is not registered"


LUA_NAMES = {
    # the script's environment (Redis 6.2 and 7)
    "KEYS", "ARGV", "redis", "string", "table", "math", "tonumber", "tostring", "pairs",
    "ipairs", "unpack", "type", "error", "pcall", "select", "next", "assert", "cjson", "bit",
    "struct", "cmsgpack", "rawget", "rawset", "setmetatable", "getmetatable", "loadstring",
    # keywords
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if", "in",
    "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
}  # fmt: skip
# What a chunk declares: local functions and their parameters, locals, a function's
# parameters, a for loop's variables (scopes aside: a name declared anywhere counts).
DECLARED = re.compile(
    r"\blocal\s+function\s+(\w+)\s*\(([\w\s,.]*)\)"
    r"|\blocal\s+([\w\s,]+?)(?:=|\n)"
    r"|\bfunction\s*\w*\s*\(([\w\s,.]*)\)"
    r"|\bfor\s+([\w\s,]+?)\s+(?:in|=)"
)
# A name used: not a field (.x, :x), not a table constructor's key or an assignment (x =).
USED = re.compile(r"(?<![.:\w])([A-Za-z_]\w*)\b(?!\s*=[^=])")


def undeclared(text: str) -> set[str]:
    """The names a script's text uses and neither declares nor gets from Lua or Redis."""
    code = lua_code(text)
    declared = set(LUA_NAMES)
    for m in DECLARED.finditer(code):
        declared |= set(re.findall(r"\w+", " ".join(g for g in m.groups() if g)))
    return set(USED.findall(code)) - declared


def test_every_name_a_script_uses_is_defined(store: Store) -> None:
    """A name a registered script uses is declared in its text (its own, or a library it is
    registered with) or is Lua's or Redis's: a library missing from a registration, or a
    protocol name misspelt, shows here, not at the first call that reaches it (Redis only
    refuses an unknown global when the line runs)."""
    for text in registered_scripts(store):
        name = re.findall(r"^-- (\w+\.lua):", text, re.M)[-1]
        assert not undeclared(text), f"{name}: undeclared {sorted(undeclared(text))}"
    # (and the check sees a library left out)
    assert {"route", "read_spec"} <= undeclared(lua("decide", "lib_stock"))


# A unit given to a stock hash is counted ('\0up', keys.STOCK_UP): a reader of a hot SKU's
# buckets compares the counts around its read (state/buckets.py snapshot). A script with
# lib_stock.lua changes units through add_units; the four without it count beside the call.
STOCK_HINCRBY = re.compile(r"'HINCRBY', (?:sku_key\([^()]*K_STOCK\)|key|stock_key),")
SELF_COUNTING = {"lend.lua", "receive.lua", "gift.lua", "gift_return.lua"}


def test_every_change_of_units_in_a_script_is_counted() -> None:
    for path in sorted(LUA.glob("*.lua")):
        text = path.read_text()
        code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
        if path.name == "lib_stock.lua":
            continue
        if path.name in SELF_COUNTING:
            calls = re.findall(r"redis\.call\('HINCRBY', KEYS\[1\], [^\n]*", code)
            counted = [c for c in calls if "STOCK_UP" in c]
            assert calls and len(counted) == len(calls) - len(counted), path.name
        else:
            assert not STOCK_HINCRBY.search(code), f"{path.name}: HINCRBY on a stock hash"
    set_stock = (LUA / "set_stock.lua").read_text()
    assert "STOCK_UP, up" in set_stock  # a reload counts, and carries the count over its DEL
