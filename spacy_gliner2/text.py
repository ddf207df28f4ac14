"""Text handling: normalisation, the GLiNER2 word splitter and long-text windows.

Knows nothing of torch or spaCy. Words are ``(lowered_text, start_char, end_char)``
triples whose offsets index the text they were cut from.
"""
import re
import sys
import unicodedata
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

Word = Tuple[str, int, int]

SENTENCE_END = (".", "!", "?")
DEFAULT_WINDOW_WORDS = 384
DEFAULT_WINDOW_OVERLAP = 64


def _combining_marks() -> str:
    return "".join(
        chr(code)
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)).startswith("M")
    )


_W = rf"[\w{re.escape(_combining_marks())}\u200c\u200d]"
_URL = r"https?://\S+|www\.\S+"
_URL_RE = re.compile(_URL, re.IGNORECASE)
_WORD_RE = re.compile(
    _URL  # URLs
    + r"|[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}"  # e-mails
    r"|@[a-z0-9_]+"  # handles
    rf"|{_W}+(?:[-_]{_W}+)*"  # words, hyphen/underscore compounds
    r"|\S",  # any other single character
    re.IGNORECASE,
)


def normalize_text(text: str) -> str:
    """Return the text the model reads: ending in sentence punctuation.

    The appended character (if any) sits past ``len(text)``, so offsets into the
    original text stay valid.
    """
    if not text:
        return "."
    return text if text.endswith(SENTENCE_END) else text + "."


def split_words(text: str, lower: bool = True) -> List[Word]:
    """Cut ``text`` into words as GLiNER2 does; offsets index ``text`` exactly."""
    return [
        (m.group().lower() if lower else m.group(), m.start(), m.end())
        for m in _WORD_RE.finditer(text)
    ]


def words_from_tokens(tokens: Iterable[Tuple[str, int]]) -> List[Word]:
    """Words from pre-tokenised text (``(token_text, start_char)`` pairs), lower-cased.

    Whitespace-only tokens are skipped: the model never sees whitespace.
    """
    return [(t.lower(), start, start + len(t)) for t, start in tokens if t.strip()]


def normalized_words(text: str, words: Sequence[Word], end: Optional[int] = None) -> List[Word]:
    """Apply the sentence-end normalisation to the words of ``text[:end]``.

    The appended period is a zero-width word at ``end`` (default ``len(text)``): the model
    reads it, but no result span can cover text that is not there. Reads only the text's
    last character (a window of a long document costs its own length, not the document's).
    """
    end = len(text) if end is None else end
    words = list(words)
    if not text.endswith(SENTENCE_END, 0, end):
        if words and words[-1][2] == end and _URL_RE.fullmatch(words[-1][0]):
            words[-1] = (words[-1][0] + ".", words[-1][1], end)  # a final URL takes the period, as \S+ does
        else:
            words.append((".", end, end))
    return words


@dataclass(frozen=True)
class Window:
    """A slice of a document's words, with its character range."""

    start_word: int
    end_word: int
    start_char: int
    end_char: int


def make_windows(
    words: Sequence[Word],
    size: int = DEFAULT_WINDOW_WORDS,
    overlap: int = DEFAULT_WINDOW_OVERLAP,
) -> List[Window]:
    """Cover all words with windows of ``size`` words overlapping by ``overlap``.

    A text of at most ``size`` words is one window; no word is ever left out.
    """
    if size <= 0:
        raise ValueError(f"window size must be > 0, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"window overlap must be in [0, size), got {overlap} for size {size}")
    if not words:
        return [Window(0, 0, 0, 0)]
    windows = []
    step = size - overlap
    start = 0
    while True:
        end = min(start + size, len(words))
        windows.append(Window(start, end, words[start][1], words[end - 1][2]))
        if end == len(words):
            return windows
        start += step
