"""The GLiClass input string, exactly as the reference pipeline builds it, and its token ids.

One string per text (``P`` = labels, ``E`` = few-shot examples)::

    P = "<<LABEL>>l1<<LABEL>>l2...<<SEP>>" + prompt
    E = "<<EXAMPLE>>{text} \\nLabels:\\n {l1, l2}" for each example, then one "<<SEP>>" ("" without examples)
    prompt_first=True:  P + text + E        prompt_first=False:  text + P + E

Unlike the reference, the marker strings and the encoder's other special tokens ([CLS], [SEP],
...) are removed from the text (each occurrence becomes a space; the runner refuses them in labels,
prompt and examples), and :func:`check_labels` verifies after tokenization that the ids hold
exactly one ``<<LABEL>>`` per label, so no input can add, drop or shift a label slot.
"""
from dataclasses import dataclass
from typing import Any, List, Mapping, Sequence

LABEL = "<<LABEL>>"
SEP = "<<SEP>>"
EXAMPLE = "<<EXAMPLE>>"
MARKERS = (LABEL, SEP, EXAMPLE)


class PromptError(ValueError):
    """The tokenized input does not hold one <<LABEL>> marker per label."""


@dataclass(frozen=True)
class Example:
    """A few-shot example: a text and its labels."""

    text: str
    labels: Sequence[str]

    @classmethod
    def from_mapping(cls, example: Mapping[str, Any]) -> "Example":
        """From the reference's dict form: ``text`` and ``labels`` (or ``true_labels``), a list or one str."""
        labels = example.get("labels", example.get("true_labels", []))
        return cls(str(example.get("text", "")), (labels,) if isinstance(labels, str) else tuple(labels))


def sanitize(value: str, reserved: Sequence[str] = MARKERS) -> str:
    """``value`` with every ``reserved`` string (the markers, or all special tokens) replaced by a
    space (none can re-form across one)."""
    for token in reserved:
        value = value.replace(token, " ")
    return value


def build_input(
    text: str,
    labels: Sequence[str],
    *,
    prompt_first: bool,
    prompt: str = "",
    examples: Sequence[Example] = (),
    reserved: Sequence[str] = MARKERS,
) -> str:
    """The string the reference (gliclass 0.1.21) builds for one text, with user parts sanitized
    (``reserved``: the strings removed from them)."""
    head = "".join(LABEL + sanitize(label, reserved) for label in labels) + SEP + sanitize(prompt or "", reserved)
    tail = ""
    if examples:
        tail = "".join(f"{EXAMPLE}{sanitize(ex.text, reserved)} \nLabels:\n "
                       f"{', '.join(sanitize(l, reserved) for l in ex.labels)}" for ex in examples) + SEP
    text = sanitize(text, reserved)
    return head + text + tail if prompt_first else text + head + tail


def tokenize(tokenizer: Any, string: str) -> List[int]:
    """Token ids of one string with the checkpoint's tokenizer: special tokens added, NO truncation
    (the caller decides what to do with inputs longer than the encoder allows)."""
    return list(tokenizer(string, add_special_tokens=True, truncation=False)["input_ids"])


def set_prefix_space(tokenizer: Any, value: bool) -> None:
    """Set the byte-level pre-tokenizer's ``add_prefix_space`` (each piece between markers then starts
    with a space, as Knowledgator recommends for ModernBERT/Ettin checkpoints; under transformers 5
    the ``add_prefix_space`` keyword of ``from_pretrained`` does not reach a generic tokenizer.json)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    levels = []
    if type(pre).__name__ == "ByteLevel":
        levels = [pre]
    elif type(pre).__name__ == "Sequence":
        i = 0
        while True:
            try:
                part = pre[i]
            except IndexError:
                break
            levels += [part] if type(part).__name__ == "ByteLevel" else []
            i += 1
    if not levels:
        raise ValueError(
            f"add_prefix_space applies to byte-level BPE tokenizers (ModernBERT, Ettin, RoBERTa); this checkpoint's "
            f"tokenizer ({type(tokenizer).__name__}, pre-tokenizer {type(pre).__name__}) has none: leave it null.")
    for level in levels:
        level.add_prefix_space = value
    backend.pre_tokenizer = pre


def tokenize_batch(tokenizer: Any, strings: Sequence[str]) -> List[List[int]]:
    """:func:`tokenize` for many strings in one tokenizer call (same ids)."""
    encoded = tokenizer(list(strings), add_special_tokens=True, truncation=False, padding=False)
    return [list(ids) for ids in encoded["input_ids"]]


def count_labels(ids: Sequence[int], class_token_index: int) -> int:
    """The number of <<LABEL>> markers in ``ids``."""
    return sum(1 for i in ids if i == class_token_index)


def check_labels(ids: Sequence[int], n_labels: int, class_token_index: int) -> None:
    """Raise :class:`PromptError` unless ``ids`` hold exactly ``n_labels`` <<LABEL>> markers."""
    found = count_labels(ids, class_token_index)
    if found != n_labels:
        raise PromptError(
            f"the tokenized GLiClass input holds {found} <<LABEL>> markers for {n_labels} labels "
            f"(<<LABEL>> id {class_token_index}); the tokenizer does not match the checkpoint's config "
            "(class_token_index) or does not treat <<LABEL>> as one special token.")
