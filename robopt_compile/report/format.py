"""How a value from a bundle becomes text in the report: numbers, badges, HTML tables.

Everything here is a pure function of its arguments. Text is escaped by ``esc`` (or kept as
already-escaped ``Raw`` markup), numbers go through ``fnum``/``pct``/``big`` so a missing or
non-finite value prints as "–", and ``table``/``kv_table`` build the report's tables from column
specs (``Col``). The Markdown report reuses the same column specs.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any


class Raw(str):
    """HTML that is already escaped (a cell or value with markup)."""


def esc(x: Any) -> str:
    """Escaped text; ``://`` becomes a character reference so that no URL appears in the
    file's bytes, even one quoted from a result (it still reads the same in a browser)."""
    return html.escape(str(x), quote=True).replace("://", ":&#47;&#47;")


def dig(d: Any, path: str, default: Any = None) -> Any:
    """``d["a"]["b"]`` for ``path="a.b"``; ``default`` when a level is missing or None."""
    for key in path.split("."):
        if not isinstance(d, dict) or d.get(key) is None:
            return default
        d = d[key]
    return d


def isnum(x: Any) -> bool:
    """A finite int or float (not a bool): a figure that can be printed and plotted."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fnum(x: Any, fmt: str = ".4g", unit: str = "") -> str:
    """A number for people; "–" for a missing or non-finite one."""
    return f"{x:{fmt}}{unit}" if isnum(x) else "–"


def pct(x: Any, digits: int = 1) -> str:
    """A fraction as a percentage ("12.5%"); "–" for a missing one."""
    return f"{100 * x:.{digits}f}%" if isnum(x) else "–"


def big(x: Any) -> str:
    """A count with a k/M/G suffix ("1.2 M"); "–" for a missing one."""
    if not isnum(x):
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:g}"


def mb(x: Any) -> Any:
    """Bytes in MB (10^6), or None."""
    return x / 1e6 if isnum(x) else None


def x100(x: Any) -> Any:
    """A fraction in points (x 100), or None."""
    return 100 * x if isnum(x) else None


def is_pair(ci: Any) -> bool:
    """A confidence interval: two numbers."""
    return isinstance(ci, list | tuple) and len(ci) == 2 and all(isnum(v) for v in ci)


def _ci(ci: Any, fmt: str = ".3g") -> str:
    if is_pair(ci):
        return f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"
    return "–"


def dicts(x: Any) -> list[dict[str, Any]]:
    """The dict items of a list field; [] for a missing or malformed one."""
    return [e for e in x if isinstance(e, dict)] if isinstance(x, list) else []


def short(text: Any, n: int = 42) -> str:
    """At most ``n`` characters, the middle cut out ("…") so both ends of a name show."""
    s = str(text)
    return s if len(s) <= n else s[: n // 2 - 1] + "…" + s[-(n - n // 2) :]


def badge(ok: Any, yes: str = "pass", no: str = "FAIL") -> Raw:
    """A green ``yes`` or red ``no`` for a bool; "–" for anything else."""
    if not isinstance(ok, bool):
        return Raw("–")
    return Raw(f'<span class="{"pass" if ok else "fail"}">{esc(yes if ok else no)}</span>')


def warn_badge(text: str) -> Raw:
    """``text`` in the warning colour."""
    return Raw(f'<span class="warn">{esc(text)}</span>')


def estimate(value: str, what: str = "estimate") -> Raw:
    """A value marked as not measured (``what`` says where it comes from)."""
    return Raw(f'{esc(value)} <span class="est">{esc(what)}</span>')


def no_scheme(url: Any) -> str:
    """A server address without its URL scheme (the report holds no URLs)."""
    return re.sub(r"^[a-z][a-z0-9+.-]*://", "", str(url))


# A column: (header, dotted path or function of the row, format). Formats: "" as is, "n" as
# is but right-aligned, ".4g"-style number, "%"/"%0"/"%2" percent, "ci"/"ci2" interval,
# "big" (k/M/G), "ok" (pass/FAIL badge).
Col = tuple[str, "str | Callable[[Any], Any]", str]


def cell_value(row: Any, col: Col) -> Any:
    """The value of ``row`` in column ``col``, formatted (text, or ``Raw`` for a badge)."""
    _, get, fmt = col
    v = get(row) if callable(get) else dig(row, get)
    if fmt in ("", "n"):
        return "–" if v is None else v
    if fmt.startswith("%"):
        return pct(v, int(fmt[1:] or 1))
    if fmt.startswith("ci"):
        return _ci(v, f".{fmt[2:] or 3}{'f' if fmt[2:] else 'g'}")
    return {"big": big, "ok": badge}.get(fmt, lambda x: fnum(x, fmt))(v)


def _is_numeric(fmt: str) -> bool:
    return fmt == "n" or fmt == "big" or fmt[:1] in (".", "%")


def table(rows: Iterable[Any], cols: Sequence[Col]) -> str:
    """An HTML table of ``rows`` by column specs; every cell is escaped unless ``Raw``."""
    out = ["<table><thead><tr>", *(f"<th>{esc(c[0])}</th>" for c in cols), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        for c in cols:
            v = cell_value(row, c)
            text = v if isinstance(v, Raw) else esc(v)
            out.append(f'<td class="n">{text}</td>' if _is_numeric(c[2]) else f"<td>{text}</td>")
        out.append("</tr>")
    return "".join([*out, "</tbody></table>"])


def kv_table(rows: Iterable[tuple[str, Any]]) -> str:
    """A two-column table; rows whose value is None or "" are left out."""
    body = "".join(
        f"<tr><th>{esc(k)}</th><td>{v if isinstance(v, Raw) else esc(v)}</td></tr>"
        for k, v in rows
        if v is not None and v != ""
    )
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def missing(text: str) -> str:
    """A paragraph saying what is not present or not measured, and how to get it."""
    return f'<p class="missing">{esc(text)}</p>'


def note(text: str) -> str:
    """A small grey paragraph."""
    return f'<p class="note">{esc(text)}</p>'


def h3(text: str) -> str:
    """A sub-heading inside a section."""
    return f"<h3>{esc(text)}</h3>"


def success_text(e: dict[str, Any], episodes: Any) -> str:
    """An engine's closed-loop success: rate and count of episodes ("90% (18/20)")."""
    n = len(dig(e, "per_seed.success", [])) or episodes or "?"
    return f"{pct(dig(e, 'success.rate'), 0)} ({dig(e, 'success.count', '?')}/{n})"
