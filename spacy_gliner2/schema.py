"""The extraction schema: entities, classifications, structures and relations.

Parsed from plain data (Python dicts, JSON, or a spaCy config block) into frozen
objects and validated with errors that say what is wrong and how to fix it.
Knows nothing of torch or spaCy.
"""
import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

SPECIAL_TOKENS: Tuple[str, ...] = (
    "[SEP_STRUCT]",
    "[SEP_TEXT]",
    "[P]",
    "[C]",
    "[E]",
    "[R]",
    "[L]",
    "[EXAMPLE]",
    "[OUTPUT]",
    "[DESCRIPTION]",
)
DEFAULT_THRESHOLD = 0.5
FIELD_DTYPES = ("str", "list")
RECORD_MODES = ("natural", "latent", "anchorless")  # GLiNER2.5 record-mode structures (boundary checkpoints)
CARDINALITIES = ("optional_one", "required_one", "zero_or_more", "one_or_more")
SCHEMA_KEYS = ("entities", "classifications", "structures", "relations", "entity_attributes")


UNCERTAIN = "uncertain"  # the decision of a task that abstains (abstain_below)


class SchemaError(ValueError):
    """A schema that cannot be used, with a message saying how to fix it."""


@dataclass(frozen=True)
class EntityType:
    name: str
    description: Optional[str] = None
    threshold: Optional[float] = None


@dataclass(frozen=True)
class ClassificationTask:
    name: str
    labels: Tuple[str, ...]
    descriptions: Tuple[Tuple[str, str], ...] = ()
    multi_label: bool = False
    threshold: float = DEFAULT_THRESHOLD
    prompt: Optional[str] = None
    examples: Tuple[Tuple[str, Union[str, Tuple[str, ...]]], ...] = ()  # (text, label or labels)
    abstain_below: Optional[float] = None  # single-label: decide UNCERTAIN when the best label's probability is lower
    numeric_labels: bool = False  # the prompt names each label by its number (a GenCLS++ ablation)
    label_numbers: Tuple[int, ...] = ()  # each label's 1-based place in the configured task (default: in order)
    nearest_examples: Optional[int] = None  # k: ``examples`` are a pool; each text's prompt shows its k nearest

    def showing(self, examples: Sequence[Tuple[str, Union[str, Tuple[str, ...]]]]) -> "ClassificationTask":
        """The task prompted with exactly ``examples`` (a text's nearest ones)."""
        return replace(self, examples=tuple(examples), nearest_examples=None)

    @property
    def shown_labels(self) -> Tuple[str, ...]:
        """The label names the prompt shows: the labels, or their numbers with ``numeric_labels``."""
        if not self.numeric_labels:
            return self.labels
        return tuple(str(n) for n in self.label_numbers or range(1, len(self.labels) + 1))

    def shown(self, label: str) -> str:
        return self.shown_labels[self.labels.index(label)] if self.numeric_labels else label

    def subset(self, labels: Sequence[str]) -> "ClassificationTask":
        """The task prompted with ``labels`` (some of its labels, in that order); each keeps its
        description and number, and examples keep only those labels (an example left without one goes)."""
        numbers = dict(zip(self.labels, self.label_numbers or range(1, len(self.labels) + 1)))
        examples = []
        for text, out in self.examples:
            if isinstance(out, str):
                examples += [(text, out)] if out in labels else []
            elif any(label in labels for label in out):
                examples.append((text, tuple(label for label in out if label in labels)))
        return replace(self, labels=tuple(labels), descriptions=tuple(d for d in self.descriptions if d[0] in labels),
                       label_numbers=tuple(numbers[label] for label in labels), examples=tuple(examples))

    @property
    def outcomes(self) -> Tuple[str, ...]:
        """The labels a decision can name: the labels, and UNCERTAIN for a task that abstains."""
        return self.labels + ((UNCERTAIN,) if self.abstain_below is not None else ())


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str = "list"
    choices: Optional[Tuple[str, ...]] = None
    description: Optional[str] = None
    threshold: Optional[float] = None
    cardinality: Optional[str] = None  # record-mode structures: how many spans an instance takes (None: the mode's default)
    exclusive: bool = False  # record-mode structures: a span fills this field in one instance at most


@dataclass(frozen=True)
class Structure:
    """A structure; with ``mode`` (GLiNER2.5 boundary checkpoints), a record structure: many instances,
    each anchored on a span of its ``anchor`` field (``natural``) or found without one."""

    name: str
    fields: Tuple[Field, ...]
    mode: Optional[str] = None
    anchor: Optional[str] = None


@dataclass(frozen=True)
class Relation:
    name: str
    description: Optional[str] = None
    threshold: Optional[float] = None


@dataclass(frozen=True)
class AttributeGroup:
    """Labels given to each extracted entity span (GLiNER2.5's span attributes): one of them, or
    (``multi_label``) each at or above ``threshold``; only for the entity types in ``applies_to``
    (None: all). The prompt reads each label as an extra entity label (``"group: label"`` with
    ``qualify_labels``)."""

    name: str
    labels: Tuple[str, ...]
    multi_label: bool = False
    threshold: float = DEFAULT_THRESHOLD
    applies_to: Optional[Tuple[str, ...]] = None
    qualify_labels: bool = False

    def prompt_label(self, label: str) -> str:
        return f"{self.name}: {label}" if self.qualify_labels else label


@dataclass(frozen=True)
class Schema:
    """A validated schema. Build it with :meth:`from_config`."""

    entities: Tuple[EntityType, ...] = ()
    classifications: Tuple[ClassificationTask, ...] = ()
    structures: Tuple[Structure, ...] = ()
    relations: Tuple[Relation, ...] = ()
    entity_attributes: Tuple[AttributeGroup, ...] = ()
    threshold: float = DEFAULT_THRESHOLD

    @classmethod
    def from_config(
        cls,
        entities: Any = None,
        classifications: Any = None,
        structures: Any = None,
        relations: Any = None,
        entity_attributes: Any = None,
        threshold: float = DEFAULT_THRESHOLD,
        class_threshold: Optional[float] = None,
    ) -> "Schema":
        """Parse and validate a schema given as plain data (see README). ``class_threshold``: the
        threshold of classification tasks that set none (else 0.5, as the reference GLiNER2's)."""
        parsed_entities = _parse_entities(entities)
        default = DEFAULT_THRESHOLD if class_threshold is None else _threshold(class_threshold, "threshold")
        schema = cls(
            entities=parsed_entities,
            classifications=_parse_classifications(classifications, default),
            structures=_parse_structures(structures),
            relations=_parse_relations(relations),
            entity_attributes=_parse_attributes(entity_attributes, parsed_entities),
            threshold=_threshold(threshold, "threshold"),
        )
        schema.cats_keys()  # validates key uniqueness
        return schema

    @classmethod
    def from_json(cls, text: str) -> "Schema":
        """Parse a JSON object with the keys of :meth:`from_config`."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise SchemaError("A JSON schema must be an object with keys " f"{list(SCHEMA_KEYS)}.")
        _check_keys(data, SCHEMA_KEYS + ("threshold",), "the schema")
        return cls.from_config(**data)

    @property
    def prompt_entities(self) -> Tuple[EntityType, ...]:
        """The entity labels of the prompt: the entity types, then every attribute label (sorted)."""
        labels = sorted(g.prompt_label(label) for g in self.entity_attributes for label in g.labels)
        return self.entities + tuple(EntityType(label) for label in labels)

    @property
    def retrieves(self) -> bool:
        """Whether a classification task chooses each text's examples (``nearest_examples``)."""
        return any(task.nearest_examples for task in self.classifications)

    @property
    def is_empty(self) -> bool:
        return not (self.entities or self.classifications or self.structures or self.relations)

    def cats_keys(self) -> List[Tuple[str, str, str]]:
        """``(task, label, doc.cats key)`` for every class label.

        One task: the key is the label. Several tasks: ``"task:label"``. A task that abstains
        also has an UNCERTAIN key (1.0 when it abstained).
        """
        many = len(self.classifications) > 1
        keys = [
            (task.name, label, f"{task.name}:{label}" if many else label)
            for task in self.classifications
            for label in task.outcomes
        ]
        seen = set()
        for task, label, key in keys:
            if key in seen:
                raise SchemaError(
                    f"Two classification labels map to the same doc.cats key {key!r}. "
                    "Rename a task or a label so that 'task:label' keys are unique."
                )
            seen.add(key)
        return keys

    def apart(self) -> List["Schema"]:
        """One schema per task: the entities (with their attributes), each classification task,
        structure and relation (a prompt too long for the encoder runs in these passes)."""
        parts = [Schema(entities=self.entities, entity_attributes=self.entity_attributes, threshold=self.threshold)]
        parts = parts if self.entities else []
        for section in ("classifications", "structures", "relations"):
            parts += [Schema(threshold=self.threshold, **{section: (task,)}) for task in getattr(self, section)]
        return parts

    def cats_in_form(self, cats: Dict[str, float]) -> Dict[str, float]:
        """The values of ``cats`` (a ``doc.cats``) under this schema's keys (:meth:`cats_keys`), read
        from either key form: ``"task:label"``, or the bare label when one task only has it (gold
        written with several tasks, read by one; feedback of one task, read beside others)."""
        keys = self.cats_keys()
        tasks_of = Counter(label for _, label, _ in keys)
        out: Dict[str, float] = {}
        for task, label, key in keys:
            found = next((k for k in (key, f"{task}:{label}", label if tasks_of[label] == 1 else None) if k in cats), None)
            if found is not None:
                out[key] = float(cats[found])
        return out

    def judged(self, cats: Dict[str, float]) -> Dict[str, Dict[str, float]]:
        """Per task, the labels that ``cats`` (a ``doc.cats``, in either key form) gives a value."""
        out: Dict[str, Dict[str, float]] = {task.name: {} for task in self.classifications}
        found = self.cats_in_form(cats)
        for task, label, key in self.cats_keys():
            if key in found:
                out[task][label] = found[key]
        return out


# -- parsing -----------------------------------------------------------------


def _text(value: Any, what: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise SchemaError(f"{what} must be a string, got {type(value).__name__}: {value!r}.")
    if not allow_empty and not value.strip():
        raise SchemaError(f"{what} must not be empty.")
    refuse_reserved(value, SPECIAL_TOKENS, what)
    return value


def refuse_reserved(value: str, reserved: Sequence[str], what: str) -> None:
    """SchemaError when ``value`` holds one of ``reserved``: strings the tokenizer reads as one special
    token (GLiNER2's markers, or the encoder's own [CLS], [SEP], ...), which schema text would inject;
    in any letter case (a tokenizer that lower-cases would read ``[sep]`` as ``[SEP]``)."""
    lowered = value.lower()
    for token in reserved:
        if token.lower() in lowered:
            raise SchemaError(
                f"{what} ({value!r}) contains {token!r}, one of the model's special tokens "
                f"{list(reserved)}. Remove or rephrase it."
            )


def _threshold(value: Any, what: str) -> float:
    """A threshold in [0, 1], to 15 significant digits: the decimal a config file gives parses to
    one float whatever the parser (confection before 1.0 reads 0.3 as 0.30000000000000004)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SchemaError(f"{what} must be a number in [0, 1], got {value!r}.")
    if not 0.0 <= float(value) <= 1.0:
        raise SchemaError(f"{what} must be in [0, 1], got {value!r}.")
    return float(f"{float(value):.15g}")


def _optional_threshold(value: Any, what: str) -> Optional[float]:
    return None if value is None else _threshold(value, what)


def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise SchemaError(f"Unknown key(s) {unknown} in {where}; allowed keys: {list(allowed)}.")


def _unique(names: Iterable[str], what: str) -> None:
    """SchemaError for a name given twice (also when two differ only in surrounding spaces, which
    the model's tokenizer may not tell apart)."""
    seen: Dict[str, str] = {}
    for name in names:
        key = name.strip() if isinstance(name, str) else name
        if key in seen:
            same = "" if seen[key] == name else f" (as {seen[key]!r}: they differ only in surrounding spaces)"
            raise SchemaError(f"Duplicate {what} {name!r}{same}: each must appear once.")
        seen[key] = name


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise SchemaError(f"{what} must be true or false, got {value!r}.")
    return value


def _sorted_items(mapping: Mapping[Any, Any], what: str) -> List[Tuple[Any, Any]]:
    """A mapping's items by sorted key (``what`` its keys are, for the duplicate check).

    spaCy config files do not keep the key order of a section that mixes values
    and sub-sections, and the order changes the prompt; sorting makes Python,
    JSON and config files agree. Lists keep their order.
    """
    _unique((k for k in mapping if isinstance(k, str)), what)
    return sorted(mapping.items(), key=lambda kv: str(kv[0]))


def _named_items(value: Any, what: str) -> List[Tuple[str, Any]]:
    """A list of names or a mapping name -> config, as (name, config) pairs."""
    if value is None:
        return []
    if isinstance(value, str):
        raise SchemaError(f"{what} must be a list of names or a mapping, got the string {value!r}.")
    if isinstance(value, Mapping):
        return _sorted_items(value, f"{what} name")
    if isinstance(value, (list, tuple)):
        items = [(name, None) for name in value]
        _unique((n for n, _ in items if isinstance(n, str)), f"{what} name")
        return items
    raise SchemaError(f"{what} must be a list of names or a mapping, got {type(value).__name__}.")


def _described(name: Any, config: Any, what: str) -> Tuple[str, Optional[str], Optional[float]]:
    """Parse ``name: None | "description" | {description, threshold}``."""
    name = _text(name, f"{what} name")
    if config is None or config == "":
        return name, None, None
    if isinstance(config, str):
        return name, _text(config, f"description of {what} {name!r}"), None
    if isinstance(config, Mapping):
        _check_keys(config, ("description", "threshold"), f"{what} {name!r}")
        desc = config.get("description")
        desc = None if desc in (None, "") else _text(desc, f"description of {what} {name!r}")
        return name, desc, _optional_threshold(config.get("threshold"), f"threshold of {what} {name!r}")
    raise SchemaError(
        f"{what} {name!r} must map to a description string or to "
        f"{{'description': ..., 'threshold': ...}}, got {config!r}."
    )


def _parse_entities(value: Any) -> Tuple[EntityType, ...]:
    return tuple(EntityType(*_described(n, c, "entity")) for n, c in _named_items(value, "entities"))


def _parse_relations(value: Any) -> Tuple[Relation, ...]:
    return tuple(Relation(*_described(n, c, "relation")) for n, c in _named_items(value, "relations"))


_ATTRIBUTE_KEYS = ("labels", "multi_label", "threshold", "applies_to", "qualify_labels")


def _parse_attributes(value: Any, entities: Tuple[EntityType, ...]) -> Tuple[AttributeGroup, ...]:
    """``group -> [labels]`` or ``group -> {labels, multi_label, threshold, applies_to, qualify_labels}``."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise SchemaError(f"entity_attributes must be a mapping group -> labels or settings, got {type(value).__name__}.")
    if value and not entities:
        raise SchemaError("entity_attributes describe entity spans: configure entities too.")
    names = {e.name for e in entities}
    groups, owner = [], {}
    for name, config in _sorted_items(value, "attribute group name"):
        name = _text(name, "attribute group name")
        if name in ("text", "confidence", "start", "end"):
            raise SchemaError(f"Attribute group name {name!r} is reserved (text, confidence, start, end): rename it.")
        config = {"labels": config} if isinstance(config, (list, tuple)) else config
        if not isinstance(config, Mapping):
            raise SchemaError(f"Attribute group {name!r} must map to a list of labels or to {{'labels': [...], ...}}.")
        _check_keys(config, _ATTRIBUTE_KEYS, f"attribute group {name!r}")
        labels = config.get("labels")
        if not isinstance(labels, (list, tuple)) or not labels:
            raise SchemaError(f"Attribute group {name!r} needs a non-empty list of labels.")
        labels = tuple(_text(label, f"label of attribute group {name!r}") for label in labels)
        _unique(labels, f"label of attribute group {name!r}")
        for label in labels:
            if label in owner:
                raise SchemaError(f"Attribute label {label!r} is in both groups {owner[label]!r} and {name!r}.")
            owner[label] = name
        applies_to = config.get("applies_to")
        if applies_to is not None:
            if isinstance(applies_to, str) or not isinstance(applies_to, (list, tuple)):
                raise SchemaError(f"applies_to of attribute group {name!r} must be a list of entity types, "
                                  f"got {applies_to!r}.")
            applies_to = tuple(_text(t, f"entity type in applies_to of attribute group {name!r}") for t in applies_to)
            unknown = sorted(set(applies_to) - names)
            if unknown:
                raise SchemaError(f"Attribute group {name!r} applies to unknown entity types {unknown}.")
        group = AttributeGroup(name, labels, _flag(config.get("multi_label", False), f"multi_label of attribute group {name!r}"),
                               _threshold(config.get("threshold", DEFAULT_THRESHOLD), f"threshold of attribute group {name!r}"),
                               applies_to, _flag(config.get("qualify_labels", False), f"qualify_labels of attribute group {name!r}"))
        clash = sorted({group.prompt_label(label) for label in labels} & names)
        if clash:
            raise SchemaError(f"Attribute labels {clash} of group {name!r} are also entity types: "
                              "rename them or set qualify_labels = true.")
        groups.append(group)
    return tuple(groups)


_TASK_KEYS = ("labels", "multi_label", "threshold", "prompt", "examples", "abstain_below", "numeric_labels",
              "nearest_examples")


def classification_section(value: Any) -> Dict[str, Any]:
    """A config's ``classifications`` as a mapping task -> options (the reference's list form
    ``[{"task": ..., ...}]`` converted; None gives an empty mapping)."""
    if isinstance(value, (list, tuple)):
        return {item["task"]: {k: v for k, v in item.items() if k != "task"} for item in value}
    return dict(value or {})


def _parse_classifications(value: Any, threshold: float = DEFAULT_THRESHOLD) -> Tuple[ClassificationTask, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):  # reference style: [{"task": ..., ...}]
        items = []
        for item in value:
            if not isinstance(item, Mapping) or "task" not in item:
                raise SchemaError(
                    "A list of classifications must hold mappings with a 'task' key, "
                    f"got {item!r}. Or use a mapping task -> labels."
                )
            items.append((_text(item["task"], "classification task name"), {k: v for k, v in item.items() if k != "task"}))
        _unique((n for n, _ in items), "classification task")
    elif isinstance(value, Mapping):
        items = _sorted_items(value, "classification task")
    else:
        raise SchemaError("classifications must be a mapping task -> labels (or task -> options).")
    return tuple(_parse_task(name, config, threshold) for name, config in items)


def _parse_task(name: Any, config: Any, threshold: float = DEFAULT_THRESHOLD) -> ClassificationTask:
    name = _text(name, "classification task name")
    where = f"classification task {name!r}"
    if not isinstance(config, Mapping) or "labels" not in config:
        config = {"labels": config}
    _check_keys(config, _TASK_KEYS, where)
    raw_labels = config["labels"]
    if isinstance(raw_labels, Mapping):
        labels = [_text(label, f"label of {where}") for label in raw_labels]
        descriptions = tuple(
            (label, _text(desc, f"description of label {label!r} in {where}"))
            for label, desc in raw_labels.items()
            if desc not in (None, "")
        )
    elif isinstance(raw_labels, (list, tuple)):
        labels = [_text(label, f"label of {where}") for label in raw_labels]
        descriptions = ()
    else:
        raise SchemaError(f"labels of {where} must be a list or a mapping label -> description.")
    if not labels:
        raise SchemaError(f"{where} has no labels; give at least one.")
    _unique(labels, f"label in {where}")
    multi = config.get("multi_label", False)
    if not isinstance(multi, bool):
        raise SchemaError(f"multi_label of {where} must be true or false, got {multi!r}.")
    prompt = config.get("prompt")
    prompt = None if prompt in (None, "") else _text(prompt, f"prompt of {where}")
    abstain = _optional_threshold(config.get("abstain_below"), f"abstain_below of {where}")
    numeric = config.get("numeric_labels", False)
    if not isinstance(numeric, bool):
        raise SchemaError(f"numeric_labels of {where} must be true or false, got {numeric!r}.")
    if abstain is not None and (multi or UNCERTAIN in labels):
        raise SchemaError(
            f"abstain_below of {where}: a task abstains by deciding {UNCERTAIN!r}, which needs a single-label task "
            f"without a label of that name (multi-label tasks already decide no label below their threshold)."
        )
    examples = []
    for example in config.get("examples") or ():
        if not isinstance(example, (list, tuple)) or len(example) != 2:
            raise SchemaError(
                f"Each example of {where} must be [input_text, label] (or [input_text, [labels]] "
                f"for a multi-label task), got {example!r}."
            )
        text, out = _text(example[0], f"example input of {where}"), example[1]
        outputs = out if isinstance(out, (list, tuple)) else [out]
        if isinstance(out, (list, tuple)) and (not multi or not out):
            raise SchemaError(
                f"Example output {out!r} of {where}: a list of labels needs a multi-label task "
                "(multi_label: true) and at least one label."
            )
        for label in outputs:
            if label not in labels:
                raise SchemaError(f"Example output {label!r} of {where} is not one of its labels {labels}.")
        examples.append((text, tuple(out) if isinstance(out, (list, tuple)) else out))
    nearest = config.get("nearest_examples")
    if nearest is not None and (isinstance(nearest, bool) or not isinstance(nearest, int) or nearest < 1):
        raise SchemaError(f"nearest_examples of {where} must be a whole number >= 1 (or absent), got {nearest!r}.")
    if nearest is not None and not examples:
        raise SchemaError(
            f"nearest_examples of {where} chooses each text's examples from the task's examples, which are "
            "missing: give a pool of labelled examples ([input_text, label] pairs) under examples."
        )
    return ClassificationTask(
        name=name,
        labels=tuple(labels),
        descriptions=descriptions,
        multi_label=multi,
        threshold=_threshold(config.get("threshold", threshold), f"threshold of {where}"),
        prompt=prompt,
        examples=tuple(examples),
        abstain_below=abstain,
        numeric_labels=numeric,
        nearest_examples=nearest,
    )


def _parse_structures(value: Any) -> Tuple[Structure, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise SchemaError("structures must be a mapping structure name -> list of fields.")
    structures = []
    for name, fields in _sorted_items(value, "structure name"):
        name = _text(name, "structure name")
        options: Mapping[str, Any] = {}
        if isinstance(fields, Mapping):
            _check_keys(fields, ("fields", "mode", "anchor"), f"structure {name!r}")
            options, fields = fields, fields.get("fields")
        if not isinstance(fields, (list, tuple)) or not fields:
            raise SchemaError(
                f"structure {name!r} needs a non-empty list of fields, e.g. "
                "['name::str::the product name', 'price::str', 'tags::list']."
            )
        parsed = tuple(parse_field(spec, name) for spec in fields)
        _unique((f.name for f in parsed), f"field in structure {name!r}")
        mode, anchor = _record_mode(name, options.get("mode"), options.get("anchor"), parsed)
        structures.append(Structure(name, parsed, mode, anchor))
    return tuple(structures)


def _record_mode(name: str, mode: Any, anchor: Any, fields: Tuple[Field, ...]) -> Tuple[Optional[str], Optional[str]]:
    """A structure's record mode and anchor field (``natural``: the first field unless named)."""
    where = f"structure {name!r}"
    if mode is None:
        if anchor is not None or any(f.cardinality or f.exclusive for f in fields):
            raise SchemaError(f"{where}: anchor, cardinality and exclusive belong to record-mode structures; "
                              f"set mode to one of {list(RECORD_MODES)}.")
        return None, None
    if mode not in RECORD_MODES:
        raise SchemaError(f"mode of {where} must be one of {list(RECORD_MODES)}, got {mode!r}.")
    if mode != "natural" and anchor is not None:
        raise SchemaError(f"{where}: a {mode} record has no anchor field; remove anchor (or use mode natural).")
    if mode == "natural":
        anchor = fields[0].name if anchor is None else anchor
        if anchor not in [f.name for f in fields]:
            raise SchemaError(f"anchor {anchor!r} of {where} is not one of its fields {[f.name for f in fields]}.")
    return mode, anchor


_FIELD_KEYS = ("name", "dtype", "choices", "description", "threshold", "cardinality", "exclusive")

_TYPE_NAMES = {*FIELD_DTYPES, "string", "text", "int", "integer", "float", "number", "double", "bool", "boolean",
               "date", "datetime", "dict", "object", "array", "enum"}  # a one-word description among these is a typo


def parse_field(spec: Any, structure: str = "?") -> Field:
    """Parse ``name::str|list::description``, ``name::[a|b]::str`` or a mapping."""
    where = f"a field of structure {structure!r}"
    if isinstance(spec, Mapping):
        _check_keys(spec, _FIELD_KEYS, where)
        name = _text(spec.get("name"), f"name of {where}")
        where = f"field {name!r} of structure {structure!r}"
        choices = spec.get("choices")
        dtype = spec.get("dtype", "str" if choices else "list")
        desc = spec.get("description")
        threshold = spec.get("threshold")
    elif isinstance(spec, str):
        parts = spec.split("::")
        name = _text(parts[0], f"name of {where} ({spec!r})")
        where = f"field {name!r} of structure {structure!r}"
        dtype, choices, desc, threshold, explicit = "list", None, None, None, False
        for part in parts[1:]:
            if part in FIELD_DTYPES:
                dtype, explicit = part, True
            elif part.startswith("[") or part.endswith("]"):
                if not (part.startswith("[") and part.endswith("]")):
                    raise SchemaError(f"Malformed choices {part!r} in {where}: write [a|b|c].")
                choices = [c.strip() for c in part[1:-1].split("|")]
                dtype = dtype if explicit else "str"
            elif desc is None:
                if not explicit and part.strip().lower() in _TYPE_NAMES:  # where a type goes: a typo of one
                    raise SchemaError(
                        f"Field spec {spec!r}: {part!r} reads as a type, but field types are {list(FIELD_DTYPES)} "
                        "(str: one value, list: every value); the form is name::str|list::description or "
                        "name::[a|b]::str. For a description that is one such word, give the type first (name::str::date)."
                    )
                desc = part
            elif parts.index(desc) == 1 and " " not in desc.strip():
                raise SchemaError(
                    f"Field spec {spec!r}: {desc!r} is not a field type (one of {list(FIELD_DTYPES)}); the form "
                    "is name::str|list::description or name::[a|b]::str."
                )
            else:
                raise SchemaError(
                    f"Field spec {spec!r} has two description parts ({desc!r} and {part!r}); the form is "
                    "name::str|list::description or name::[a|b]::str."
                )
    else:
        raise SchemaError(f"{where} must be a 'name::type::description' string or a mapping, got {spec!r}.")
    if dtype not in FIELD_DTYPES:
        raise SchemaError(f"dtype of {where} must be one of {list(FIELD_DTYPES)}, got {dtype!r}.")
    if choices is not None:
        if not isinstance(choices, (list, tuple)) or not choices:
            raise SchemaError(f"choices of {where} must be a non-empty list.")
        choices = tuple(_text(c, f"a choice of {where}") for c in choices)
        _unique(choices, f"choice in {where}")
    desc = None if desc in (None, "") else _text(desc, f"description of {where}")
    cardinality = spec.get("cardinality") if isinstance(spec, Mapping) else None
    if cardinality is not None and cardinality not in CARDINALITIES:
        raise SchemaError(f"cardinality of {where} must be one of {list(CARDINALITIES)}, got {cardinality!r}.")
    exclusive = spec.get("exclusive", False) if isinstance(spec, Mapping) else False
    if not isinstance(exclusive, bool):
        raise SchemaError(f"exclusive of {where} must be true or false, got {exclusive!r}.")
    return Field(name, dtype, choices, desc, _optional_threshold(threshold, f"threshold of {where}"), cardinality, exclusive)

