"""report.md -> report.html: one self-contained page (markdown-it, figures embedded as base64
PNGs, collapsible details), so that it can be mailed or attached."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path


# --- markdown -> self-contained HTML ---------------------------------------------------------
# Wide tables scroll inside their own box and long words wrap, so the page itself is never
# wider than the window (tests/experiments/report/test_report_html.py checks this in headless Chromium).
_HTML_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:1em 0;font-size:0.88em;display:block;max-width:100%;
overflow-x:auto}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;
overflow-wrap:normal}th{background:#f2f2f2}img{max-width:100%;height:auto}
code{background:#f5f5f5;padding:0 3px}pre{background:#f5f5f5;padding:.6em;overflow-x:auto}
h1,h2,h3{border-bottom:1px solid #eee}summary{cursor:pointer;color:#335}"""


def _compact_png(path: Path) -> bytes:
    """The PNG re-encoded with a 256-colour palette: plots have few colours, and this makes
    the embedded page about 3x smaller (a page with a dozen figures stays well under 1 MB)."""
    raw = path.read_bytes()
    try:
        from PIL import Image
        with Image.open(io.BytesIO(raw)) as im:
            pal = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
            buf = io.BytesIO()
            pal.save(buf, format="PNG", optimize=True)
        return buf.getvalue() if buf.tell() < len(raw) else raw
    except Exception:  # Pillow missing or an odd file: embed it as it is
        return raw


def details(summary: str, body: str) -> list[str]:
    """Markdown lines of a collapsed block (``<details>``; GitHub renders it, and
    `markdown_to_html` turns exactly this form into a real one while raw HTML stays off)."""
    return ["", f"<details><summary>{summary}</summary>", "", body, "", "</details>"]


def _open_details(body: str) -> str:
    # markdown-it (raw HTML off) escaped the lines `details` wrote: make them elements again.
    body = re.sub(r"<p>&lt;details&gt;&lt;summary&gt;(.*?)&lt;/summary&gt;</p>",
                  r"<details><summary>\1</summary>", body)
    return body.replace("<p>&lt;/details&gt;</p>", "</details>")


def markdown_to_html(markdown: str, base_dir: Path, title: str) -> str:
    """Render Markdown to one self-contained HTML page, images embedded as base64.

    markdown-it-py does the parsing (CommonMark plus tables); relative ``<img src>`` paths are
    resolved against ``base_dir`` and inlined as data URIs so the page has no external files.
    """
    from markdown_it import MarkdownIt
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)

    def inline(match: re.Match[str]) -> str:
        src = html.unescape(match.group(1))
        p = (base_dir / src) if not src.startswith(("data:", "http:", "https:")) else None
        if p is None or not p.is_file():
            return match.group(0)
        mime = "image/svg+xml" if p.suffix == ".svg" else f"image/{p.suffix.lstrip('.') or 'png'}"
        data = base64.b64encode(_compact_png(p) if p.suffix == ".png"
                                else p.read_bytes()).decode("ascii")
        return f'src="data:{mime};base64,{data}"'

    body = _open_details(re.sub(r'src="([^"]+)"', inline, body))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_HTML_STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")
