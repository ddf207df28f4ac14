"""Long texts as word windows, and records grouped into length-sorted batches.

Family-neutral: a window knows its text, its words and where it sits in its document;
how a window becomes model input is the family's (its runner's ``encode``).
"""
from dataclasses import dataclass
from typing import List, Sequence

from ..text import Word, make_windows, normalized_words


def length_batches(order: Sequence[int], lengths: Sequence[int], size: int, max_tokens: int) -> List[List[int]]:
    """Consecutive groups of the (length-sorted) records: at most ``size`` records and, past
    the first record, at most ``max_tokens`` padded tokens (bounds memory on long documents)."""
    batches: List[List[int]] = []
    for j in order:
        current = batches[-1] if batches else None
        if current is None or len(current) >= size or (len(current) + 1) * max(lengths[j], lengths[current[-1]]) > max_tokens:
            batches.append([j])
        else:
            current.append(j)
    return batches


@dataclass
class TextWindow:
    """One window of a document: its words, offsets into the document text."""

    doc: int
    raw: List[Word]  # the window's words, offsets into the document text
    end: int  # where the window's text ends (it is normalised up to here)
    text: str  # the whole document text
    whole: bool = False  # the window is the whole document

    @property
    def words(self) -> List[Word]:
        """The window's words, normalised as the reference's word splitter does."""
        return normalized_words(self.text, self.raw, self.end)

    @property
    def start(self) -> int:
        return self.raw[0][1] if self.raw else 0

    @property
    def span_text(self) -> str:
        """The window's own text (the whole document, leading spaces included, when it is not cut)."""
        return self.text if self.whole else self.text[self.start : self.end]

    def cut_word(self) -> "TextWindow":
        """This one-word window as two words, the word cut at its middle character (then
        :meth:`halves` can split it): for a word too long for the encoder in a family that
        reads the text as a string."""
        (word, start, end), middle = self.raw[0], (self.raw[0][1] + self.raw[0][2]) // 2
        cut = middle - start
        return TextWindow(self.doc, [(word[:cut], start, middle), (word[cut:], middle, end)], self.end, self.text)

    def halves(self, overlap: int) -> List["TextWindow"]:
        """Two overlapping windows covering this one's words."""
        n = len(self.raw)
        overlap = min(overlap, n // 4)
        size = (n + overlap + 1) // 2
        out = []
        for win in make_windows(self.raw, size, overlap):
            end = self.raw[win.end_word - 1][2] if win.end_word < n else self.end
            out.append(TextWindow(self.doc, self.raw[win.start_word : win.end_word], end, self.text))
        return out


def document_windows(texts: Sequence[str], words: Sequence[Sequence[Word]], size: int, overlap: int) -> List[TextWindow]:
    """Every text cut into windows of ``size`` words overlapping by ``overlap``, in order."""
    out = []
    for i, (text, text_words) in enumerate(zip(texts, words)):
        windows = make_windows(text_words, size, overlap)
        for win in windows:
            end = win.end_char if win.end_word < len(text_words) else len(text)
            out.append(TextWindow(i, list(text_words[win.start_word : win.end_word]), end, text, len(windows) == 1))
    return out
