"""Word splitting, normalisation and windows."""
import pytest

from spacy_gliner2.text import make_windows, normalize_text, normalized_words, split_words, words_from_tokens

TEXTS = [
    "Apple CEO Tim Cook visited Paris on Monday.",
    "Mail me at jane.doe@example.org or see https://example.com/a?b=c, www.test.io!",
    "@handle wrote: state-of-the-art snake_case 3.14 and 1,000,000 items",
    "Zürich, São Paulo and Łódź: naïve café; 東京 タワー; กรุงเทพ; مرحبا بالعالم",
    "  leading and trailing spaces  ",
    "Emoji 🎉 and control\tchars\nnew line\x00nul",
    "",
    "...",
    "İstanbul ﬁnance",  # lower-casing changes length: offsets must stay exact
]


@pytest.mark.parametrize("text", TEXTS)
def test_split_words_matches_reference(text):
    from gliner2.processing.word_splitter import WhitespaceTokenSplitter

    expected = list(WhitespaceTokenSplitter()(text, lower=True))
    assert split_words(text) == expected


@pytest.mark.parametrize("text", TEXTS)
def test_offsets_index_the_text(text):
    for word, start, end in split_words(text, lower=False):
        assert text[start:end] == word


def test_normalisation():
    assert normalize_text("") == "."
    assert normalize_text("Hi") == "Hi."
    assert normalize_text("Hi!") == "Hi!"
    words = normalized_words("Hi there", split_words("Hi there"))
    assert words[-1] == (".", 8, 8)  # zero-width: covers no text
    assert normalized_words("Hi.", split_words("Hi.")) == split_words("Hi.")


def test_words_from_tokens_skips_whitespace():
    assert words_from_tokens([("New", 0), (" ", 3), ("York", 4)]) == [("new", 0, 3), ("york", 4, 8)]


@pytest.mark.parametrize("n,size,overlap", [(0, 4, 1), (3, 4, 1), (4, 4, 1), (5, 4, 1), (20, 6, 2), (1000, 384, 64)])
def test_windows_cover_every_word(n, size, overlap):
    words = [(f"w{i}", 3 * i, 3 * i + 2) for i in range(n)]
    windows = make_windows(words, size, overlap)
    covered = set()
    for w in windows:
        assert w.end_word - w.start_word <= size
        covered.update(range(w.start_word, w.end_word))
    assert covered == set(range(n))
    for a, b in zip(windows, windows[1:]):
        assert a.end_word - b.start_word == overlap


def test_bad_windows():
    with pytest.raises(ValueError):
        make_windows([], 0, 0)
    with pytest.raises(ValueError):
        make_windows([], 4, 4)
