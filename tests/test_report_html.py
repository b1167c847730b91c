"""report.html: written by `s2t eval`, self-contained, and working in a real browser.

The page is generated through the real eval path (the tiny trained run of tests/conftest.py)
and opened from its file:// URL in headless Chromium (Debian's `chromium`, which `make setup`
installs), driven by Playwright with that executable (no browser download).
"""
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from s2t import html_report

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # --headless: Playwright adds it (headless=True)


@pytest.fixture(scope="module")
def page_of():
    """A function opening a file in headless Chromium: (page, console errors, requested URLs)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: `make setup` installs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="chromium-profile-")  # a fresh --user-data-dir
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), headless=True,
                                                       args=FLAGS, viewport={"width": 1280, "height": 900})
        seen = {"errors": [], "urls": []}
        page = context.new_page()
        page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
        page.on("pageerror", lambda e: seen["errors"].append(f"uncaught: {e}"))
        page.on("request", lambda r: seen["urls"].append(r.url))

        def open_page(path: Path):
            page.goto(path.as_uri())
            page.wait_for_selector("#samples tbody tr")
            return page, seen

        yield open_page
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


def test_eval_writes_a_self_contained_report(evaluated):
    _, summary, out = evaluated
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert len(page.encode()) < 5_000_000
    # nothing to fetch: no http(s) URL in any src/href, every plot inlined
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    written = sorted(p.name for p in out.glob("*.png"))
    assert page.count('src="data:image/png;base64,') == len(written) >= 4
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)[1])
    assert len(data["records"]) == summary["n_samples"]
    assert data["clips"] and data["clip_order"][0] in data["clips"]
    assert "**" not in page.split("<script")[0]  # the summary's markdown is rendered


def test_report_works_in_headless_chromium(evaluated, page_of):
    from PIL import Image

    _, summary, out = evaluated
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    page, seen = page_of(out / "report.html")
    assert page.locator("#samples tbody tr").count() == summary["n_samples"] == len(predictions)
    assert page.locator("#worst-table tbody tr").count() == min(html_report.WORST, len(predictions))
    # the stick figure animates: two pictures of it some hundred ms apart differ
    figure = page.locator("#stick")
    assert page.locator("#stick line[visibility=visible]").count() > 20
    first = figure.screenshot()
    page.wait_for_timeout(600)
    assert figure.screenshot() != first
    # the page is not blank
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("L"))
    values, counts = np.unique(shot, return_counts=True)
    assert len(values) > 50 and 1 - counts.max() / shot.size > 0.05
    # sort by WER (descending first), filter by a column test, pick a clip from the table
    page.click("#samples th[data-key=wer]")
    top = page.locator("#samples tbody tr").first.get_attribute("data-id")
    assert next(p["wer"] for p in predictions if p["id"] == top) == max(p["wer"] for p in predictions)
    page.fill("#filter", "wer>0.5")
    assert page.locator("#samples tbody tr").count() == sum(p["wer"] > 0.5 for p in predictions)
    page.fill("#filter", "")
    chosen = predictions[len(predictions) // 2]
    page.locator(f'#samples tbody tr[data-id="{chosen["id"]}"]').click()
    assert chosen["reference"] in page.inner_text("#details")
    assert seen["errors"] == []
    assert all(u.startswith(("file:", "data:")) for u in seen["urls"]), seen["urls"]


def test_markdown_is_rendered_and_escaped():
    md = ("# Title `x<y`\n\nA **bold** and *italic* <b>tag</b>.\n\n| a | b \\| c |\n|---|---:|\n"
          "| 1 | <script> |\n\n- one\n- two **2**\n")
    out = html_report.markdown_html(md)
    assert "<h2>Title <code>x&lt;y</code></h2>" in out
    assert "<strong>bold</strong>" in out and "<em>italic</em>" in out and "&lt;b&gt;tag&lt;/b&gt;" in out
    assert "<th>a</th>" in out and '<th class="num">b | c</th>' in out and '<td class="num">&lt;script&gt;</td>' in out
    assert "<ul><li>one</li><li>two <strong>2</strong></li></ul>" in out


def test_embedded_json_cannot_close_the_script():
    text = html_report._script_json({"t": "</script><!-- & \u2028"})
    assert "<" not in text and ">" not in text and json.loads(text) == {"t": "</script><!-- & \u2028"}


def test_stick_figure_strides_rounds_and_marks_missing_points():
    T = 130
    pose = np.random.default_rng(0).uniform(0.2, 0.8, (T, 33, 3))
    left = np.full((T, 21, 3), np.nan)
    right = np.random.default_rng(1).uniform(0.4, 0.6, (T, 21, 3))
    fig = html_report.stick_figure({"pose": pose, "left_hand": left, "right_hand": right}, fps=30)
    assert len(fig["frames"]) == 44 and fig["fps"] == 10  # stride 3
    frame = fig["frames"][1]
    assert len(frame) == 2 * len(html_report.POINTS)
    assert frame[:2] == [round(pose[3, 0, 0] * 1000), round(pose[3, 0, 1] * 1000)]
    n_pose = len(html_report.POSE_POINTS)
    assert all(v is None for v in frame[2 * n_pose:2 * (n_pose + 21)])  # the missing left hand
    x, y, w, h = fig["box"]
    assert x < 200 and y < 200 and x + w > 800 and y + h > 800


def test_worst_clips_rank_by_wer_then_rank():
    records = [{"id": "a", "wer": 0.5, "rank_v2t": 1}, {"id": "b", "wer": None}, {"id": "c", "wer": 1.0, "rank_v2t": 1},
               {"id": "d", "wer": 0.5, "rank_v2t": 7}]
    assert html_report.worst_clips(records, 3) == [2, 3, 0]
    assert html_report.clips_to_embed(records, [2, 3], max_clips=3) == [2, 3, 0]
