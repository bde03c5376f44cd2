"""Is every character a page shows drawn with a real glyph, not the missing-glyph box (tofu)?

In the browser: every visible text node's characters beyond ASCII (Hangul, CJK, Greek, math ...),
grouped by the computed font of the element that holds them (style, weight, family stack: the font
the page draws them with). Each distinct character is drawn on a canvas in that font and compared
with the drawing of U+10FFFD, a private-use code point no font has, in the same font: Chromium draws
every character that no font of the stack nor the system's fallback has as the same .notdef glyph
of the stack's first font, so the same pixels and the same advance width mean a missing glyph (also
where that .notdef is blank, as in some web fonts: the real glyph of a character that is not skipped
draws ink). Characters that draw nothing by design (spaces, format characters, variation selectors)
are skipped. The reference is itself checked: U+FFFFD (another private-use code point) must draw the
same, else the font's characters count as unchecked and the check fails.

``missing_glyphs(page)`` runs the check on the page shown; ``glyph_report(missing)`` words a
failure: the page, the characters (with their code points) and a snippet of text around each.
Figures are images: a character matplotlib has no glyph for is a box inside the PNG, out of the
canvas test's reach, but matplotlib says so in a warning that the page shows in the cell's output
("Glyph 44592 (\\N{HANGUL SYLLABLE GI}) missing from font(s) DejaVu Sans."); ``figure_tofu(page)``
finds those warnings in the page's text.

``without_fonts_for(char, folder)`` writes a fontconfig file under which no installed font has
``char``: Chromium launched with it draws that character as tofu on any machine, which is how the
checks prove that this test fails on a missing glyph.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import warnings
from pathlib import Path
from xml.sax.saxutils import escape

# A code point no font has (plane 16's last private-use character), and a second one to check it by.
NO_GLYPH = "\U0010fffd"
ALSO_NO_GLYPH = "\U000ffffd"

# matplotlib's warning for a character its fonts have no glyph for (matplotlib/_text_helpers.py).
FIGURE_WARNING = re.compile(r"Glyph \d+ \((?:\\N\{[^}]*\}|[^)]*)\) missing from font\(s\) [^\n]*?\.(?=\s|$)")

MISSING_GLYPHS = r"""async ([noGlyph, alsoNoGlyph]) => {
    await document.fonts.ready;
    const skip = /^[\x00-\x7f]$|[\p{White_Space}\p{Default_Ignorable_Code_Point}\p{Cc}\p{Cf}\p{Cs}]/u;
    const hidden = new Set(["SCRIPT", "STYLE", "NOSCRIPT", "TEMPLATE", "TITLE"]);
    const found = new Map();  // font -> {sized: the font at 32px, chars: Map(character -> a snippet of its text)}
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const element = node.parentElement;
        if (!element || hidden.has(element.tagName) || !/[^\x00-\x7f]/.test(node.data)) continue;
        if (!element.checkVisibility({visibilityProperty: true, contentVisibilityAuto: true})) continue;
        const style = getComputedStyle(element);
        if (parseFloat(style.fontSize) === 0) continue;
        const font = `${style.fontStyle} ${style.fontWeight} ${style.fontFamily}`;
        const sized = `${style.fontStyle} ${style.fontWeight} 32px ${style.fontFamily}`;
        if (!found.has(font)) found.set(font, {sized, chars: new Map()});
        const chars = found.get(font).chars, points = [...node.data];  // by code point: no half surrogate pair
        points.forEach((char, at) => {
            if (!skip.test(char) && !chars.has(char)) {
                chars.set(char, points.slice(Math.max(0, at - 20), at + 21).join("").replace(/\s+/g, " ").trim());
            }
        });
    }
    const canvas = document.createElement("canvas");
    canvas.width = 160; canvas.height = 64;
    const context = canvas.getContext("2d", {willReadFrequently: true});
    const draw = text => {
        context.clearRect(0, 0, canvas.width, canvas.height);
        context.fillText(text, 16, 44);
        const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
        return {width: context.measureText(text).width, pixels};
    };
    const same = (a, b) => a.width === b.width && a.pixels.every((value, i) => value === b.pixels[i]);
    const missing = [], unusable = [];
    let checked = 0;
    for (const [font, {sized, chars}] of found) {
        context.font = "1px sentinel-font-that-is-not-there";
        context.font = sized;
        if (context.font.startsWith("1px")) { unusable.push(font); continue; }
        await document.fonts.load(sized, [...chars.keys()].join("") + noGlyph);
        const tofu = draw(noGlyph);
        if (!same(tofu, draw(alsoNoGlyph))) { unusable.push(font); continue; }
        for (const [char, snippet] of chars) {
            checked += 1;
            if (same(draw(char), tofu)) missing.push({char, font, snippet});
        }
    }
    return {checked, missing, unusable};
}"""


def missing_glyphs(page) -> dict:
    """On the page shown: ``checked`` (how many distinct (character, font) pairs), ``missing`` (a list of
    {char, font, snippet}: drawn as the missing-glyph box) and ``unusable`` (fonts the check could not
    use: a font the canvas refuses, or one in which two code points without glyphs draw differently;
    their characters are unchecked, and the checks fail on them too)."""
    return page.evaluate(MISSING_GLYPHS, [NO_GLYPH, ALSO_NO_GLYPH])


def figure_tofu(page) -> list[str]:
    """matplotlib's warnings, shown in the page's text, about characters drawn without a glyph in a figure."""
    return sorted(set(FIGURE_WARNING.findall(page.evaluate("document.body.innerText"))))


def matplotlib_warning_for(text: str) -> str:
    """The warning matplotlib gives for ``text`` (no ASCII) in a figure title drawn with DejaVu Sans alone."""
    import matplotlib
    from matplotlib.figure import Figure

    with warnings.catch_warnings(record=True) as caught, matplotlib.rc_context({"font.family": ["DejaVu Sans"]}):
        warnings.simplefilter("always")
        figure = Figure()
        figure.add_subplot().set_title(text)
        figure.savefig(io.BytesIO(), format="png")
    return next(str(warning.message) for warning in caught if "missing from font" in str(warning.message))


def glyph_report(pages: dict[str, dict]) -> str:
    """The failures of ``{page: missing_glyphs(...)}`` in words: per page, each missing character with its
    code point, the font stack it was drawn with and a snippet of the text that holds it."""
    lines = []
    for name, result in pages.items():
        if result["unusable"]:
            lines.append(f"{name}: glyphs could not be checked in the fonts {result['unusable']}")
        by_font: dict[str, list[dict]] = {}
        for entry in result["missing"]:
            by_font.setdefault(entry["font"], []).append(entry)
        for font, entries in by_font.items():
            chars = "".join(entry["char"] for entry in entries)
            codes = " ".join(f"U+{ord(entry['char']):04X}" for entry in entries[:12])
            more = f" (and {len(entries) - 12} more)" if len(entries) > 12 else ""
            lines.append(f"{name}: {len(entries)} characters drawn as the missing-glyph box in the font "
                         f"{font!r}: {chars[:60]!r} ({codes}{more}); e.g. in {entries[0]['snippet']!r}")
    return "\n".join(lines)


def without_fonts_for(char: str, folder: Path) -> dict[str, str]:
    """The environment for a Chromium in which no font has ``char``: a fontconfig file in ``folder`` that
    loads the system's configuration and rejects every font file that covers ``char`` (fc-list)."""
    def font_files(env=None):
        listed = subprocess.run(["fc-list", "--format", "%{file}\\n", f":charset={ord(char):x}"],
                                capture_output=True, text=True, check=True, env=env)
        return sorted(set(listed.stdout.splitlines()))

    rejected = "".join(f"<glob>{escape(file)}</glob>" for file in font_files())
    config = folder / "fonts.conf"
    config.write_text('<?xml version="1.0"?>\n<!DOCTYPE fontconfig SYSTEM "urn:fontconfig:fonts.dtd">\n'
                      f"<fontconfig><include>/etc/fonts/fonts.conf</include>"
                      f"<selectfont><rejectfont>{rejected}</rejectfont></selectfont></fontconfig>\n")
    env = {**os.environ, "FONTCONFIG_FILE": str(config)}
    left = font_files(env)
    assert not left, f"fonts for {char!r} still there under {config}: {left}"
    return env


def platform_fonts(page, selector: str) -> dict[str, int]:
    """The installed fonts Chromium drew the text of the first ``selector`` element with, as {family: glyphs}
    (DevTools' CSS.getPlatformFontsForNode)."""
    devtools = page.context.new_cdp_session(page)
    try:
        devtools.send("DOM.enable")
        devtools.send("CSS.enable")
        root = devtools.send("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
        node = devtools.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        assert node, f"no {selector} on the page"
        fonts = devtools.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    finally:
        devtools.detach()
    return {font["familyName"]: font["glyphCount"] for font in fonts}


def glyph_check_on_test_pages(korean: str, tofu: str, folder: Path, prose: str, output: str, screenshot: Path,
                              refused: list) -> dict:
    """The glyph check on a test's own pages (file URIs): ``korean`` with the fonts installed and as if
    fonts-noto-cjk were missing, ``tofu`` (a character no font has) with them; the fonts drawing the
    ``prose`` and ``output`` elements of ``korean``. Non-file requests go into ``refused``."""
    from playwright.sync_api import sync_playwright

    from tests.browser.chromium import launch, offline_context

    seen = {}
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = offline_context(browser, refused).new_page()
            page.goto(korean, wait_until="load")
            seen.update(with_fonts=missing_glyphs(page), figures_with_fonts=figure_tofu(page),
                        prose=platform_fonts(page, prose), output=platform_fonts(page, output))
            page.goto(tofu, wait_until="load")
            seen.update(with_tofu=missing_glyphs(page), figures_with_tofu=figure_tofu(page))
        finally:
            browser.close()
        browser = launch(playwright, env=without_fonts_for("한", folder))  # as if fonts-noto-cjk were missing
        try:
            page = offline_context(browser, refused).new_page()
            page.goto(korean, wait_until="load")
            page.screenshot(path=screenshot)
            seen["without_fonts"] = missing_glyphs(page)
        finally:
            browser.close()
    return seen
