"""The HTML diagnosis report (``qexact.report.render_diagnosis_html``), rendered for real.

On the forum model (qnnpack) with the forum formula's numbers:

- the page is self-contained (no http(s) URL in a src or href; the only URL is the SVG xmlns),
  and holds the histogram ``<svg>``, every finding id and the explain trace;
- headless Chromium renders it to a PNG that is not blank: decoded with numpy and zlib only, it
  has many colours, the histogram's red bars and the summary's tinted background.

Chromium is Debian's ``chromium`` (CI installs it in ``.ci/run``); without it the rendering test
is skipped.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest

import qexact
from qexact.report import render_diagnosis_html

BAR_RED = (0xC0, 0x39, 0x2B)        # the histogram bars (report._histogram_svg)
SUMMARY_TINT = (0xFD, 0xEC, 0xEA)   # .summary background


def forum_formula(net, x: np.ndarray) -> np.ndarray:
    """The forum user's ``sum((xq - zx) * (wq - zw)) * sx * sw + bias``, in float64."""
    quant, layer = net.layers["quant"], net.layers["fc_1"]
    xq = qexact.quantize_per_tensor(x, quant.scale, quant.zero_point, quant.dtype).values
    zw = np.asarray(layer.weight_zero_point, dtype=np.int64)
    weight = layer.weight.astype(np.int64) - (zw[:, None] if zw.ndim else zw)
    acc = (xq.astype(np.int64) - layer.input_zero_point) @ weight.T
    return (acc * (layer.input_scale * np.asarray(layer.weight_scale, dtype=np.float64))
            + layer.float_bias.astype(np.float64))


@pytest.fixture(scope="module")
def report():
    """``(html, diagnosis, explanation)`` for the forum formula on 64 inputs."""
    torch = pytest.importorskip("torch")
    from support.models import build, forum_model

    previous = torch.backends.quantized.engine
    try:
        model, shape = build(forum_model, "qnnpack")
        net = qexact.from_torch(model, example_inputs=(torch.rand(shape),))
    finally:
        torch.backends.quantized.engine = previous
    x = np.random.default_rng(5).random((64, 10), dtype=np.float32)
    theirs = forum_formula(net, x)
    diagnosis = qexact.diagnose(net, x, theirs)
    worst = np.unravel_index(int(np.argmax(np.abs(theirs - net(x)))), theirs.shape)
    explanation = net.explain(x, index=tuple(int(i) for i in worst))
    return render_diagnosis_html(diagnosis, explanation), diagnosis, explanation


# --- The HTML itself -----------------------------------------------------------------------------


@pytest.mark.torch
def test_self_contained(report):
    page, _, _ = report
    urls = re.findall(r"https?://[^\s\"'<>]*", page)
    assert set(urls) <= {"http://www.w3.org/2000/svg"}, urls
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"<(script|link|iframe|img)\b", page, re.IGNORECASE)
    assert "xmlns=\"http://www.w3.org/2000/svg\"" in page


@pytest.mark.torch
def test_contents(report):
    page, diagnosis, explanation = report
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert diagnosis.differing > 0 and diagnosis.findings
    assert page.count("<svg") == 1 and "</svg>" in page
    assert page.count('fill="#c0392b"') >= 1   # at least one histogram bar
    ids = [finding.id for finding in diagnosis.findings]
    assert "missing_output_requantization" in ids
    for identifier in ids:
        assert f"<code>{identifier}</code>" in page
    assert "step by step" in page
    # The trace, escaped: its first line and every stage name.
    import html

    trace = html.escape(explanation.render("text"))
    assert trace in page
    for stage in explanation.stages:
        assert html.escape(stage.name) in page


# --- Rendered in headless Chromium ---------------------------------------------------------------


def read_png(path) -> np.ndarray:
    """An 8-bit, non-interlaced greyscale/RGB/RGBA PNG as a (height, width, channels) array."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, header, compressed = 8, None, []
    while position < len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        kind = data[position + 4:position + 8]
        body = data[position + 8:position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    assert depth == 8 and interlace == 0, header
    stride = width * channels
    raw = np.frombuffer(zlib.decompress(b"".join(compressed)), np.uint8)
    raw = raw.reshape(height, stride + 1)
    image = np.zeros((height, stride), np.uint8)
    previous = np.zeros(stride, np.uint8)
    for row in range(height):
        kind, line = raw[row, 0], raw[row, 1:]
        if kind == 0:
            current = line.copy()
        elif kind == 1:    # Sub: a running sum per channel
            current = (np.cumsum(line.reshape(width, channels), axis=0, dtype=np.uint64) % 256
                       ).astype(np.uint8).ravel()
        elif kind == 2:    # Up
            current = line + previous
        elif kind in (3, 4):   # Average, Paeth: sequential, in Python ints
            out, above = [0] * stride, previous.tolist()
            values = line.tolist()
            for i in range(stride):
                left = out[i - channels] if i >= channels else 0
                up = above[i]
                if kind == 3:
                    predictor = (left + up) >> 1
                else:
                    upper_left = above[i - channels] if i >= channels else 0
                    p = left + up - upper_left
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - upper_left)
                    predictor = left if pa <= pb and pa <= pc else up if pb <= pc else upper_left
                out[i] = (values[i] + predictor) & 0xFF
            current = np.array(out, np.uint8)
        else:
            raise AssertionError(f"bad PNG filter {kind}")
        image[row] = previous = current
    return image.reshape(height, width, channels)


def test_read_png_roundtrip(tmp_path):
    """The decoder above, on a PNG written by hand with every filter type."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    rows, previous = [], np.zeros(21, np.int16)
    for kind, row in enumerate(image.reshape(5, 21).astype(np.int16)):
        left = np.concatenate([np.zeros(3, np.int16), row[:-3]])
        upper_left = np.concatenate([np.zeros(3, np.int16), previous[:-3]])
        if kind == 0:
            predictor = np.zeros(21, np.int16)
        elif kind == 1:
            predictor = left
        elif kind == 2:
            predictor = previous
        elif kind == 3:
            predictor = (left + previous) >> 1
        else:
            p = left + previous - upper_left
            pa, pb, pc = abs(p - left), abs(p - previous), abs(p - upper_left)
            predictor = np.where((pa <= pb) & (pa <= pc), left,
                                 np.where(pb <= pc, previous, upper_left))
        rows.append(bytes([kind]) + ((row - predictor) & 0xFF).astype(np.uint8).tobytes())
        previous = row

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    path = tmp_path / "t.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 7, 5, 8, 2,
                     0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))
    np.testing.assert_array_equal(read_png(path), image)


def count_colour(image: np.ndarray, rgb, tolerance: int = 2) -> int:
    return int(np.all(np.abs(image[..., :3].astype(int) - rgb) <= tolerance, axis=-1).sum())


@pytest.mark.torch
def test_renders_in_chromium(report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; "
                    ".ci/run installs it)")
    page, _, _ = report
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    shot = tmp_path / "shot.png"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
               f"--screenshot={shot}", "--window-size=1000,1400", path.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    assert shot.stat().st_size > 20_000, "a blank 1000x1400 page compresses to a few KB"

    image = read_png(shot)
    assert image.shape[:2] == (1400, 1000)
    colours = np.unique(image[..., :3].reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"only {len(colours)} colours: a blank or broken page"
    # The histogram's tallest bar: (240 - 2*30) px high, (640 - 60)/buckets - 4 px wide.
    assert count_colour(image, BAR_RED) > 2000, "no histogram bars"
    assert count_colour(image, SUMMARY_TINT) > 5000, "no summary box"
    # Dark text pixels all the way down to the trace (the lower third of the page).
    dark = np.all(image[..., :3] < 96, axis=-1)
    assert dark[:470].sum() > 500 and dark[930:].sum() > 2000, "text missing"


FITS_SCRIPT = """<script>
window.onload = () => {
  const texts = [...document.querySelectorAll("svg text")];
  const clipped = texts.filter(t => { const b = t.getBBox(), w = t.ownerSVGElement.width.baseVal.value;
                                      return b.x < 0 || b.x + b.width > w; });
  document.title = clipped.length ? "clipped: " + clipped.map(t => t.textContent).join(" | ") : "fits";
};
</script>"""


@pytest.mark.torch
@pytest.mark.parametrize("buckets", [{1: 4}, {1: 4, 2: 1}, {k: k for k in range(1, 40)}])
def test_histogram_text_fits_in_chromium(report, tmp_path, buckets):
    """One, two and many bars: every caption and label lies inside the SVG, as Chromium lays
    it out (measured in the page by getBBox, read back with --dump-dom)."""
    import dataclasses

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    _, diagnosis, _ = report
    page = render_diagnosis_html(dataclasses.replace(diagnosis, step_differences=buckets))
    path = tmp_path / "page.html"
    path.write_text(page.replace("</body>", FITS_SCRIPT + "</body>"), encoding="utf-8")
    result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                             "--virtual-time-budget=2000", "--dump-dom", path.as_uri()],
                            capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>(.*?)</title>", result.stdout, re.DOTALL)
    assert title is not None, result.stderr[-2000:]
    assert title.group(1) == "fits", title.group(1)


@pytest.mark.torch
def test_worst_element_shows_yours_and_exact(report):
    page, diagnosis, _ = report
    gap = np.abs(diagnosis.theirs - diagnosis.exact)
    index = np.unravel_index(int(np.argmax(gap)), gap.shape)
    assert f"yours <code>{diagnosis.theirs[index]}</code>" in page
    assert f"exact <code>{diagnosis.exact[index]}</code>" in page
