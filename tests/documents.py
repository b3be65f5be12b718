"""Reading printed documents back with independent tools: poppler (``pdftotext``, ``pdfinfo``,
``pdftoppm``; Debian poppler-utils), zbar (``zbarimg``; Debian zbar-tools) and tesseract. The
tests check what a person or a phone would read, not what our code meant to write."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

__all__ = ["ocr_text", "pdf_page_count", "pdf_page_png", "pdf_text", "qr_codes"]


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} missing: install Debian {package} (make system-deps)"
    return path


def pdf_text(pdf: Path) -> str:
    """The PDF's text in reading order, lines kept (``pdftotext -layout``)."""
    return subprocess.run([_tool("pdftotext", "poppler-utils"), "-layout", str(pdf), "-"],
                          capture_output=True, check=True, text=True).stdout


def pdf_page_count(pdf: Path) -> int:
    info = subprocess.run([_tool("pdfinfo", "poppler-utils"), str(pdf)], capture_output=True,
                          check=True, text=True).stdout
    match = re.search(r"^Pages:\s+(\d+)$", info, re.M)
    assert match, info
    return int(match.group(1))


def pdf_page_png(pdf: Path, out_dir: Path, *, page: int = 1, dpi: int = 150) -> Path:
    """One page rendered by poppler, as a printer would (``pdftoppm``)."""
    prefix = out_dir / f"{pdf.stem}-page"
    subprocess.run([_tool("pdftoppm", "poppler-utils"), "-r", str(dpi), "-png", "-f", str(page),
                    "-l", str(page), "-singlefile", str(pdf), str(prefix)], check=True)
    return prefix.parent / f"{prefix.name}.png"


def qr_codes(image: Path) -> list[str]:
    """Every QR code zbar finds in the image, decoded."""
    run = subprocess.run([_tool("zbarimg", "zbar-tools"), "--quiet", "--raw",
                          "-Sdisable", "-Sqrcode.enable", str(image)],
                         capture_output=True, text=True)
    assert run.returncode in (0, 4), run.stderr  # 4: no code found
    return [line for line in run.stdout.splitlines() if line]


def ocr_text(image: Path) -> str:
    """What tesseract reads in the image (English)."""
    return subprocess.run([_tool("tesseract", "tesseract-ocr"), str(image), "-", "-l", "eng"],
                          capture_output=True, check=True, text=True).stdout
