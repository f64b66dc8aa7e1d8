"""The licence texts every Debian and Ubuntu system ships: the demo model's training text, and the
held-out text that conversion checks and ensemble evaluation read when given none.

Source: /usr/share/common-licenses, installed by the `base-files` package, which is Essential (present
on every Debian/Ubuntu install). The texts (GPL, LGPL, GFDL, Apache, MPL, Artistic, BSD, CC0) are
about 300 kB of real English, redistributable verbatim, which is enough for a small model to write
recognisable licence prose. Every tenth paragraph is held out for perplexity measurements.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CORPUS_DIR = Path("/usr/share/common-licenses")
HELD_OUT_EVERY = 10


@dataclass(frozen=True)
class Corpus:
    train: tuple[str, ...]  # paragraphs
    held_out: tuple[str, ...]
    source: str


def _paragraphs(text: str) -> list[str]:
    # Licence files are hard-wrapped and indented; one paragraph per blank-line-separated block reads
    # as prose once whitespace runs are collapsed.
    return [p for p in (re.sub(r"\s+", " ", block).strip() for block in re.split(r"\n\s*\n", text)) if p]


def load_corpus(directory: Path = CORPUS_DIR) -> Corpus:
    files = sorted(p for p in directory.glob("*") if p.is_file() and not p.is_symlink())
    if not files:
        raise FileNotFoundError(
            f"{directory} holds no licence texts; it comes with Debian's base-files package"
        )
    paragraphs = [p for f in files for p in _paragraphs(f.read_text(errors="replace"))]
    held_out = tuple(p for i, p in enumerate(paragraphs) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1)
    train = tuple(p for i, p in enumerate(paragraphs) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1)
    return Corpus(
        train=train, held_out=held_out, source=f"{directory} (Debian base-files), {len(files)} files"
    )


def split_first_sentence(paragraph: str) -> tuple[str, str] | None:
    """'A. B. C.' -> ('A.', 'B. C.'): the demo's chat examples ask with one sentence, answer with the rest."""
    match = re.match(r"(.{12,200}?[.:;?!])\s+(\S.{20,})", paragraph)
    return (match.group(1), match.group(2)) if match else None
