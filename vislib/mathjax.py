"""MathJax for pages that must show formulas offline: the course site and the learners' feedback
pages. MathJax 2 as the pinned jupyter-server-mathjax package ships it: TeX input, HTML-CSS output
with the STIX-Web fonts (the only web fonts there) and the TeX extensions MathJax loads on demand;
not its SVG output, its accessibility extensions (3.7 MB) or its translations."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import jupyter_server_mathjax

SOURCE = Path(jupyter_server_mathjax.__file__).parent / "static"
FILES = ("LICENSE", "MathJax.js", "config/TeX-AMS-MML_HTMLorMML-full.js", "config/Safe.js", "extensions",
         "jax/input/TeX", "jax/element", "jax/output/HTML-CSS", "fonts/HTML-CSS/STIX-Web/woff")
URL = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"  # relative to the page, beside mathjax/


def install(folder: Path, link: bool = False) -> None:
    """MathJax's FILES into ``folder/mathjax/``; with ``link``, as hard links where the file system
    allows (many feedback folders then share one copy on disk)."""
    def place(source: str, target: str) -> None:
        if link:
            try:
                os.link(source, target)
                return
            except OSError:
                pass
        shutil.copy2(source, target)

    for name in FILES:
        source, target = SOURCE / name, Path(folder) / "mathjax" / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("a11y"), copy_function=place,
                            dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.unlink()
            place(str(source), str(target))
