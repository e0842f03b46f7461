"""Text clean-up for corpus transcripts (mis-decoded punctuation, stray whitespace)."""

from __future__ import annotations

import re
import unicodedata

# C1 control characters that appear when cp1252 bytes were decoded as latin-1 (MELD's "\x92" etc.).
_C1_AS_CP1252 = {chr(b): bytes([b]).decode("cp1252") for b in range(0x80, 0xA0) if b not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)}
# Typographic punctuation mapped to ASCII so the same line tokenises the same way in every corpus.
_ASCII_PUNCT = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"',
        "\u2013": "-", "\u2014": " - ", "\u2026": "...", "\u00a0": " ",
    }
)
_MOJIBAKE_MARKERS = re.compile("[\u00c2\u00c3\u00e2][\u0080-\u00bf\u20ac\u201a-\u201e\u2018-\u201d\u2020-\u2122\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc]")
_SPACES = re.compile(r"\s+")
# A lone "Â" before a non-letter is the residue of a mis-decoded non-breaking space or symbol.
_STRAY_A_CIRCUMFLEX = re.compile("\u00c2(?=[^A-Za-z])")


def _undo_mojibake(text: str) -> str:
    """Repair UTF-8 text that was decoded as cp1252/latin-1 (e.g. 'Iâ€™m' -> 'I’m'), if it round-trips."""
    if not _MOJIBAKE_MARKERS.search(text):
        return text
    for codec in ("cp1252", "latin-1"):
        try:
            return text.encode(codec).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
    # Mixed text: repair only the marked spans, leaving everything else as it is.
    def fix(match: re.Match[str]) -> str:
        span = match.group(0)
        try:
            return span.encode("cp1252").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return span

    return re.sub("[\u00c2\u00c3\u00e2][^\\s]{1,2}", fix, text)


def clean_text(text: str, ascii_punctuation: bool = True) -> str:
    """Normalise one transcript line: undo mojibake, map C1 controls, NFKC, optional ASCII punctuation."""
    text = _undo_mojibake(text)
    text = "".join(_C1_AS_CP1252.get(ch, ch) for ch in text)
    text = _STRAY_A_CIRCUMFLEX.sub("", text)
    text = unicodedata.normalize("NFKC", text)
    if ascii_punctuation:
        text = text.translate(_ASCII_PUNCT)
    return _SPACES.sub(" ", text).strip()
