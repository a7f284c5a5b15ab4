"""The analysts' notebooks: run one against the warehouse, render it as one HTML page."""

from __future__ import annotations

import base64
import datetime as dt
import html
import logging
import os
import re
from pathlib import Path
from typing import Any

from ._database import Database, first_line, redact
from .errors import CraftmartError, ExitCode

logger = logging.getLogger(__name__)

#: The notebook `craftmart-batch report` runs unless told otherwise.
DEFAULT_NOTEBOOK = "marts_check.ipynb"

#: Exit code of a notebook that ran and raised: one of its checks failed (exit 1, as a
#: stale mart in `status --max-age`), as opposed to a report that could not start (2).
CHECK_FAILED = ExitCode.CHECK_FAILED


def find_notebook(path: Path | None = None) -> Path:
    """``path``, else ``notebooks/marts_check.ipynb`` under the current directory, else
    the one beside the package's source tree (a checkout or an editable install)."""
    if path is not None:
        if not path.is_file():
            raise CraftmartError(f"notebook not found: {path}")
        return path
    candidates = [
        Path.cwd() / "notebooks" / DEFAULT_NOTEBOOK,
        Path(__file__).resolve().parents[2] / "notebooks" / DEFAULT_NOTEBOOK,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise CraftmartError(
        f"cannot find notebooks/{DEFAULT_NOTEBOOK} (run from the project root or give --notebook)"
    )


def execute(path: Path, db: Database, *, config: Path | None = None,
            timeout: int = 600) -> Any:
    """Run every cell of the notebook top to bottom in a fresh kernel; return the
    executed notebook.

    The kernel reaches the same database as the command through ``$CRAFTMART_DSN``
    (and the same ``config.toml`` through ``$CRAFTMART_CONFIG``) and starts in the
    notebook's folder, as in Jupyter. A cell that raises (a failed reconciliation) is a
    ``CraftmartError`` naming the cell and the error, exit code 1.
    """
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    except ImportError:
        raise CraftmartError(
            "running notebooks needs the notebooks extra: pip install 'craftmart-batch[notebooks]'"
        ) from None
    nb = nbformat.read(path, as_version=4)
    env = {**os.environ, "CRAFTMART_DSN": db.libpq_uri()}
    if config is not None:
        env["CRAFTMART_CONFIG"] = str(config.resolve())
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        # the kernel's own notices (transport warnings) are noise on the command's stderr
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
        resources={"metadata": {"path": str(path.resolve().parent)}},
    )
    try:
        client.execute(env=env)
    except CellExecutionError as exc:
        cell = _failed_cell(nb)
        raise CraftmartError(
            f"{path.name}{cell} failed: {exc.ename}: {first_line(redact(exc.evalue))}",
            CHECK_FAILED,
        ) from None
    except (CellTimeoutError, DeadKernelError) as exc:
        raise CraftmartError(f"{path.name}: {first_line(redact(str(exc)))}") from None
    except Exception as exc:  # the kernel could not start: missing ipykernel, a broken env
        raise CraftmartError(
            f"{path.name}: could not run the notebook: {type(exc).__name__}: "
            f"{first_line(redact(str(exc)))}"
        ) from None
    return nb


def _failed_cell(nb: Any) -> str:
    for number, cell in enumerate(nb.cells, start=1):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return f" (cell {number})"
    return ""


# --------------------------------------------------------------------------- HTML

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1100px; margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }
h1, h2, h3 { line-height: 1.2; }
header p { color: #666; margin-top: 0; }
pre { background: #f6f8fa; padding: .6rem .8rem; overflow-x: auto; font-size: .85rem; }
pre.stderr { background: #fff5e6; }
code { background: #f0f0f0; padding: 0 .2rem; }
details { margin: .3rem 0; color: #555; }
summary { cursor: pointer; font-size: .85rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0; }
th, td { border: 1px solid #ddd; padding: .2rem .5rem; text-align: right; }
th { background: #f3f3f3; }
"""


def render_html(nb: Any, *, title: str, subtitle: str = "") -> str:
    """The executed notebook as one self-contained page: Markdown cells as text, each
    code cell's outputs (tables, printed lines, charts as inline base64 PNG) with its
    code folded away. Needs no network and no JavaScript."""
    body: list[str] = []
    charts = 0
    for cell in nb.cells:
        source = cell.get("source", "")
        if cell.cell_type == "markdown":
            body.append(markdown_to_html(source))
            continue
        if cell.cell_type != "code":
            continue
        label = _cell_label(source)
        if source.strip():
            body.append(f"<details><summary>code{': ' + html.escape(label) if label else ''}"
                        f"</summary><pre>{html.escape(source)}</pre></details>")
        for output in cell.get("outputs", []):
            kind = output.get("output_type")
            if kind == "stream":
                css = ' class="stderr"' if output.get("name") == "stderr" else ""
                body.append(f"<pre{css}>{html.escape(_text(output.get('text', '')))}</pre>")
            elif kind in ("execute_result", "display_data"):
                data = output.get("data", {})
                if "image/png" in data:
                    charts += 1
                    png = "".join(_text(data["image/png"]).split())
                    base64.b64decode(png, validate=True)  # refuse a broken image early
                    alt = html.escape(label or f"chart {charts}", quote=True)
                    body.append(f'<figure><img class="chart" alt="{alt}" '
                                f'src="data:image/png;base64,{png}"></figure>')
                elif "text/html" in data:
                    body.append(f'<div class="output">{_text(data["text/html"])}</div>')
                elif "text/plain" in data:
                    body.append(f"<pre>{html.escape(_text(data['text/plain']))}</pre>")
            elif kind == "error":
                body.append(f'<pre class="stderr">{html.escape(output.get("ename", ""))}: '
                            f'{html.escape(output.get("evalue", ""))}</pre>')
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = " · ".join(p for p in (subtitle, f"generated {generated}") if p)
    return "\n".join([
        "<!doctype html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<header><p>{html.escape(meta)}</p></header>",
        "<main>",
        *body,
        "</main>",
        "</body>",
        "</html>",
        "",
    ])


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _cell_label(source: str) -> str:
    """A code cell's first comment line: what the cell does, said by its author."""
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and not stripped.startswith("#!"):
            return stripped.lstrip("#").strip()
        if stripped and not stripped.startswith("%"):
            return ""
    return ""


_INLINE = [
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])"), r"<em>\1</em>"),
    (re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)"), r'<a href="\2">\1</a>'),
]


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    # code spans are cut out first, so the other rules never touch their text
    parts = re.split(r"(`[^`]+`)", out)
    rendered = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            rendered.append(f"<code>{part[1:-1]}</code>")
            continue
        for pattern, repl in _INLINE:
            part = pattern.sub(repl, part)
        rendered.append(part)
    return "".join(rendered)


def markdown_to_html(text: str) -> str:
    """The Markdown the notebooks use: headings, paragraphs, lists, fenced code,
    inline code, bold, italics and links. Not a general Markdown renderer."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
            continue
        if stripped.startswith("```"):
            block = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                block.append(lines[i])
                i += 1
            out.append(f"<pre>{html.escape(chr(10).join(block))}</pre>")
            i += 1
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)$", stripped)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            i += 1
            continue
        item = re.compile(r"^\s*(?:[-*]|\d+\.)\s+")
        if item.match(line):
            ordered = bool(re.match(r"^\s*\d+\.", line))
            items: list[str] = []
            while i < len(lines) and lines[i].strip():
                if item.match(lines[i]):
                    items.append(item.sub("", lines[i], count=1))
                elif items:  # a continuation line of the item
                    items[-1] += " " + lines[i].strip()
                i += 1
            tag = "ol" if ordered else "ul"
            out.append(f"<{tag}>" + "".join(f"<li>{_inline(x)}</li>" for x in items)
                       + f"</{tag}>")
            continue
        paragraph = []
        while i < len(lines) and lines[i].strip() and not lines[i].strip().startswith(
            ("#", "```")
        ) and not item.match(lines[i]):
            paragraph.append(lines[i].strip())
            i += 1
        out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
    return "\n".join(out)


def write_report(path: Path, db: Database, out: Path, *, config: Path | None = None,
                 timeout: int = 600) -> int:
    """Run the notebook and write it as one self-contained HTML page; return the number
    of charts in it."""
    nb = execute(path, db, config=config, timeout=timeout)
    title = _notebook_title(nb) or path.stem
    page = render_html(nb, title=title, subtitle=f"{path.name} on {db.display()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise CraftmartError(f"cannot write {out}: {exc.strerror or exc}") from None
    return page.count('<img class="chart"')


def _notebook_title(nb: Any) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            match = re.search(r"^#\s+(.+)$", cell.source, re.MULTILINE)
            if match:
                return re.sub(r"[`*]", "", match.group(1)).strip()
    return ""
