"""`craftmart-batch report`: the marts-check notebook as one self-contained HTML page,
opened in a real headless browser."""

from __future__ import annotations

import base64
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import generated_warehouse

from craftmart_batch._database import Database
from craftmart_batch.notebook import markdown_to_html, render_html

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NEEDS_CHROMIUM = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install chromium; .ci/run installs it)",
)
#: A 1x1 PNG.
PIXEL = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CRAFTMART_DSN", "CRAFTMART_CONFIG")}
    return subprocess.run(
        [sys.executable, "-m", "craftmart_batch.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, check=False, env=env,
    )


@pytest.fixture(scope="module")
def marketplace(pg_server: Database) -> Iterator[Database]:
    """A warehouse built from two thousand generated orders."""
    with generated_warehouse(pg_server, "report", 2000, seed=11) as db:
        yield db


@pytest.fixture(scope="module")
def report(
    marketplace: Database, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`craftmart-batch report --out report.html`, run once from an empty directory."""
    cwd = tmp_path_factory.mktemp("report")
    result = cli("report", "--dsn", marketplace.libpq_uri(), "--out", "report.html", cwd=cwd)
    return result, cwd / "report.html"


def test_report_writes_one_self_contained_page_with_inline_charts(
    report: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """The page carries its four charts as base64 PNG, its tables and text, and loads
    nothing from anywhere: no external src or href, no script."""
    result, page = report
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1] == "wrote report.html (4 charts)"
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>")
    assert "<title>Marts check: the marts against the DWH</title>" in text
    images = re.findall(r'<img class="chart" alt="([^"]*)" src="data:image/png;base64,([^"]+)"',
                        text)
    assert [alt for alt, _ in images] == [
        "Revenue and platform money by month",
        "Order-status mix by month",
        "Median completion time by month",
        "Top customers and craftsmen by money, all months",
    ]
    for _, data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    assert "match the DWH, column for column" in text
    assert "months reconciled:" in text
    assert "<table" in text  # the frames, as Polars renders them
    assert not re.search(r'(?:src|href)="(?!data:|#)', text)
    assert "<script" not in text
    assert "<details><summary>code: Settings and connection" in text


@NEEDS_CHROMIUM
def test_report_renders_in_a_headless_browser_with_every_chart_decoded(
    report: tuple[subprocess.CompletedProcess[str], Path], tmp_path: Path
) -> None:
    """Chromium (headless, no network) opens the page: the screenshot is a real picture,
    and in the rendered DOM all four chart images are decoded, with their real size."""
    result, page = report
    assert result.returncode == 0, result.stderr
    assert CHROMIUM is not None
    flags = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
    ]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()],
                   capture_output=True, timeout=120, check=False)

    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert (width, height) == (1200, 2000)
    assert len(png) > 30_000  # a blank page compresses to a few kilobytes

    # The test, not the report, adds a probe that records what the browser decoded.
    probe = tmp_path / "probe.html"
    probe.write_text(
        page.read_text(encoding="utf-8").replace(
            "</body>",
            "<script>window.addEventListener('load', () => {"
            " const ok = [...document.images].filter(i => i.complete && i.naturalWidth > 400);"
            " document.body.dataset.decoded = ok.length; });</script></body>",
        ),
        encoding="utf-8",
    )
    dom = subprocess.run([*flags, "--dump-dom", "--virtual-time-budget=5000", probe.as_uri()],
                         capture_output=True, text=True, timeout=120, check=False).stdout
    assert len(re.findall(r'<img class="chart"', dom)) == 4
    assert 'data-decoded="4"' in dom, dom[:500]


def test_report_exits_1_naming_the_cell_when_a_check_fails(
    marketplace: Database, tmp_path: Path
) -> None:
    """A notebook that raises (a failed reconciliation) makes `report` exit 1 with one
    line naming the notebook, the cell and the error; no page is written."""
    notebook = tmp_path / "check.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# A check"),
        nbformat.v4.new_code_cell("import os\nassert os.environ['CRAFTMART_DSN']"),
        nbformat.v4.new_code_cell("assert 1 + 1 == 3, 'customer money differs in 2024-03'"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                "language": "python"}}), notebook)

    result = cli("report", "--dsn", marketplace.libpq_uri(), "--notebook", str(notebook),
                 "--out", "out.html", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "craftmart-batch: error: check.ipynb (cell 3) failed: AssertionError: customer money"
        " differs in 2024-03"
    )
    assert not (tmp_path / "out.html").exists()


def test_report_without_its_notebook_exits_2(tmp_path: Path) -> None:
    result = cli("report", "--notebook", str(tmp_path / "missing.ipynb"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"craftmart-batch: error: notebook not found: {tmp_path / 'missing.ipynb'}"
    ]


def test_markdown_cells_become_html_with_their_markup_and_no_raw_html() -> None:
    """Headings, paragraphs, lists, fenced code, inline code, bold, links; any HTML in
    the text is shown, not run."""
    html = markdown_to_html(
        "# Title\n\nSome **bold** text with `a < b` and a [link](https://example.com).\n\n"
        "- one\n- two `x`\n\n1. first\n2. second\n\n```\nselect 1;\n```\n\n<script>x</script>"
    )
    assert html.splitlines() == [
        "<h1>Title</h1>",
        '<p>Some <strong>bold</strong> text with <code>a &lt; b</code> and a '
        '<a href="https://example.com">link</a>.</p>',
        "<ul><li>one</li><li>two <code>x</code></li></ul>",
        "<ol><li>first</li><li>second</li></ol>",
        "<pre>select 1;</pre>",
        "<p>&lt;script&gt;x&lt;/script&gt;</p>",
    ]


def test_render_html_shows_each_kind_of_output() -> None:
    """Printed text, tables (text/html), plain results and images, the code folded."""
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[
        v4.new_markdown_cell("# Report"),
        v4.new_code_cell("# Totals\nprint('hi')", outputs=[
            v4.new_output("stream", name="stdout", text="12 orders <ok>\n"),
            v4.new_output("execute_result", data={"text/html": "<table><tr><td>1</td></tr>"
                                                  "</table>", "text/plain": "frame"},
                          execution_count=1),
            v4.new_output("execute_result", data={"text/plain": "42"}, execution_count=2),
            v4.new_output("display_data", data={"image/png": PIXEL, "text/plain": "<Figure>"}),
        ]),
    ])
    page = render_html(nb, title="Report <1>", subtitle="on db")

    assert "<title>Report &lt;1&gt;</title>" in page
    assert "<pre>12 orders &lt;ok&gt;\n</pre>" in page
    assert '<div class="output"><table><tr><td>1</td></tr></table></div>' in page
    assert "<pre>42</pre>" in page
    assert f'<img class="chart" alt="Totals" src="data:image/png;base64,{PIXEL}">' in page
    assert "<details><summary>code: Totals</summary><pre># Totals\nprint(&#x27;hi&#x27;)</pre>" \
        in page
    assert "frame" not in page and "&lt;Figure&gt;" not in page  # the richer form wins
