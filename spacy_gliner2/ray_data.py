"""Run a saved pipeline with a ``gliner2`` or ``gliclass`` component over a Ray Dataset.

Optional: ``pip install "spacy-gliner2[ray]"``. ``import spacy_gliner2`` never imports Ray.

Each record keeps its input columns and gets the fields of :func:`~.records.doc_record`:

- ``entities``: a list of ``{"text", "label", "start_char", "end_char", "score"}`` (``doc.ents``;
  ``score``: the confidence in the ``gliner2`` component's ``doc.spans`` group, null for entities
  of other components);
- ``cats``: ``doc.cats``, as a JSON string;
- per ``gliner2`` / ``gliclass`` component of the pipeline, its Doc extension (``doc._.gliner2``,
  ``doc._.gliclass``), as a JSON string;
- ``error``: null, or ``"ExceptionType: message"`` when the record failed (its other new columns are
  then null).

Class keys and result shapes vary by pipeline and record: JSON strings keep one column type in
every block and Parquet file. JSONL files written by :func:`annotate_files` hold them as JSON
objects instead (the records of ``python -m spacy_gliner2 run``, plus ``error``).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Tuple, Union

from .records import doc_record, json_objects, pipeline_outputs

if TYPE_CHECKING:
    import pyarrow
    import ray.data
    from spacy.language import Language
    from spacy.tokens import Doc

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
BATCH_SIZE = 64
Concurrency = Union[int, Tuple[int, int]]


def _require_ray() -> Any:
    """The ``ray`` module with Ray Data loaded, or an ImportError that says what to install."""
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise ImportError(f'spacy_gliner2.ray_data needs Ray Data: pip install "spacy-gliner2[ray]" ({error})') from error
    return ray


def _extensions(pipeline_path: str) -> List[str]:
    """The extension names a saved pipeline writes, from its config (the weights stay on disk)."""
    import spacy

    return pipeline_outputs(spacy.util.load_config(Path(pipeline_path) / "config.cfg", interpolate=False)).extensions


def output_fields(extensions: List[str]) -> List[pyarrow.Field]:
    """The columns :func:`annotate_dataset` adds, in order, for a pipeline writing ``extensions``."""
    import pyarrow as pa

    entity = pa.struct([("text", pa.string()), ("label", pa.string()), ("start_char", pa.int64()),
                        ("end_char", pa.int64()), ("score", pa.float64())])
    return [pa.field("entities", pa.list_(entity)), *(pa.field(name, pa.string()) for name in ["cats", *extensions, "error"])]


class Annotator:
    """The ``map_batches`` callable class: loads the pipeline once per actor, annotates Arrow batches.

    pipeline_path (str): a folder written by ``nlp.to_disk``, readable on every node.
    text_column (str): the column holding the texts.
    batch_size (int): ``nlp.pipe``'s batch size (the component length-sorts each such chunk).
    torch_threads (int): ``torch.set_num_threads`` in this process.
    """

    def __init__(self, pipeline_path: str, *, text_column: str = "text", batch_size: int = BATCH_SIZE,
                 torch_threads: int = 1) -> None:
        import spacy
        import torch

        torch.set_num_threads(torch_threads)
        self.nlp: Language = spacy.load(pipeline_path)
        self.outputs = pipeline_outputs(self.nlp.config)
        self.text_column, self.batch_size = text_column, batch_size

    def __call__(self, batch: pyarrow.Table) -> pyarrow.Table:
        """The batch with the output columns appended (input columns unchanged)."""
        import pyarrow as pa

        records = self._annotate(batch.column(self.text_column).to_pylist())
        for field in output_fields(self.outputs.extensions):
            batch = batch.append_column(field, pa.array([record.get(field.name) for record in records], field.type))
        return batch

    def _annotate(self, texts: List[Any]) -> List[Dict[str, Any]]:
        """One record per text; if the batch raises, the texts are run one by one."""
        try:
            return [self._record(doc) for doc in self.nlp.pipe(texts, batch_size=self.batch_size)]
        except Exception as error:
            logger.warning("a batch of %d texts failed (%s: %s); running them one by one",
                           len(texts), type(error).__name__, error)
            return [self._one(text) for text in texts]

    def _one(self, text: Any) -> Dict[str, Any]:
        try:
            return self._record(self.nlp(text))
        except Exception as error:
            return {"error": f"{type(error).__name__}: {error}"}

    def _record(self, doc: Doc) -> Dict[str, Any]:
        record = doc_record(doc, self.outputs)
        return {"entities": record["entities"],
                **{name: json.dumps(record[name]) for name in ["cats", *self.outputs.extensions]}}


def annotate_dataset(
    ds: ray.data.Dataset,
    pipeline_path: Union[str, Path],
    *,
    text_column: str = "text",
    batch_size: int = BATCH_SIZE,
    concurrency: Optional[Concurrency] = None,
    num_cpus_per_actor: Optional[float] = None,
    torch_threads: int = 1,
) -> ray.data.Dataset:
    """Annotate ``ds[text_column]`` with the pipeline at ``pipeline_path`` (lazy, like ``map_batches``;
    the columns are checked first, for which Ray may read a first block).

    ds (ray.data.Dataset): the records; other columns pass through unchanged.
    pipeline_path (str / Path): a saved pipeline, at the same absolute path on every node (a relative
        path is taken from this process's working folder).
    batch_size (int): records per actor call, and ``nlp.pipe``'s batch size.
    concurrency (int / (int, int)): actors: a fixed pool, or the min and max of an autoscaling one;
        None: from 1 up to the cluster's CPUs divided by ``num_cpus_per_actor``. A fixed pool that
        takes every CPU leaves none to the tasks feeding it (reads): Ray then waits forever.
    num_cpus_per_actor (float): CPUs reserved per actor; None: ``torch_threads``.
    torch_threads (int): torch threads per actor.
    RETURNS (ray.data.Dataset): the records with the columns of :func:`output_fields`. Row order
        follows Ray's ``DataContext.execution_options.preserve_order`` (off by default).
    """
    ray = _require_ray()
    pipeline_path = str(Path(pipeline_path).resolve())  # actors do not run in this process's folder
    columns = ds.columns()
    if text_column not in columns:
        raise ValueError(f"the dataset has no column {text_column!r} (its columns: {columns}); "
                         "name the text column with text_column=")
    taken = [f.name for f in output_fields(_extensions(pipeline_path)) if f.name in columns]
    if taken:
        raise ValueError(f"the dataset already has the output column(s) {taken}: rename them first")
    num_cpus = torch_threads if num_cpus_per_actor is None else num_cpus_per_actor
    if concurrency is None:
        if not ray.is_initialized():
            ray.init()
        concurrency = (1, max(1, int(ray.cluster_resources().get("CPU", 1) // num_cpus)))
    pool = (ray.data.ActorPoolStrategy(size=concurrency) if isinstance(concurrency, int)
            else ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1]))
    return ds.map_batches(
        Annotator, batch_format="pyarrow", batch_size=batch_size, compute=pool, num_cpus=num_cpus,
        fn_constructor_kwargs={"pipeline_path": pipeline_path, "text_column": text_column,
                               "batch_size": batch_size, "torch_threads": torch_threads})


class Written(NamedTuple):
    """What :func:`annotate_files` wrote: records, and how many of them have an ``error``."""

    records: int
    errors: int


def _read_jsonl(path: Path, text_column: str) -> List[Dict[str, Any]]:
    """The JSON objects of a JSONL file, as they are (no type inferred from strings); a line that
    is not one, or a file in which no record has ``text_column``, is a ValueError naming it."""
    records = [record for _, record in json_objects(path)]
    if records and not any(text_column in record for record in records):
        raise ValueError(f"{path}: no record has a {text_column!r} field; name the text field (text_column, "
                         "--text-field)")
    return records


def _format(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: unknown format; use a file ending in one of {sorted(FORMATS)}") from None


def annotate_files(input_path: Union[str, Path], output_path: Union[str, Path], pipeline_path: Union[str, Path],
                   *, batch_size: int = BATCH_SIZE, **options: Any) -> Written:
    """Annotate a JSONL or Parquet file into one file in the format of ``output_path``'s extension
    (``.jsonl``, ``.json``, ``.parquet``), rows in input order. ``batch_size`` and ``options``: as
    :func:`annotate_dataset`.

    Both files are read and written by this process (the actors get the records in blocks of
    ``batch_size``): only the pipeline needs to be on every node.
    RETURNS (Written): the records written, and how many of them have an ``error``.
    """
    ray = _require_ray()
    import pyarrow as pa
    import pyarrow.parquet as pq

    input_path, output_path = Path(input_path), Path(output_path)
    read, write = _format(input_path), _format(output_path)
    text_column = options.get("text_column", "text")
    originals = _read_jsonl(input_path, text_column) if read == "jsonl" else None
    if originals is None:
        table = pq.read_table(input_path)
    elif write == "jsonl":  # only the texts travel; each record is written back as it was
        texts = [r.get(text_column) if isinstance(r.get(text_column), str) else None for r in originals]
        table = pa.table({text_column: pa.array(texts, pa.string())})
    else:
        try:
            table = pa.Table.from_pylist(originals)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise ValueError(f"{input_path}: a field changes type between records ({error}), which Parquet "
                             "cannot hold; write JSONL instead (records are copied as they are)") from None
    blocks = [pa.Table.from_batches([b]) for b in table.to_batches(max_chunksize=batch_size)] or [table]
    context = ray.data.DataContext.get_current()
    ordered = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # datasets copy the context when created
    try:
        annotated = annotate_dataset(ray.data.from_arrow(blocks), pipeline_path, batch_size=batch_size, **options)
    finally:
        context.execution_options.preserve_order = ordered
    extensions = _extensions(str(pipeline_path))
    decoded = ["cats", *extensions]  # JSON strings -> objects in JSONL
    added = [field.name for field in output_fields(extensions)]
    taken = sorted({key for record in originals or () for key in record} & set(added))
    if taken:
        raise ValueError(f"{input_path}: records already have the output field(s) {taken}: rename them first")
    partial = output_path.with_name(output_path.name + ".partial")
    records = errors = 0
    writer = None
    try:
        with open(partial, "wb") as f:
            for batch in annotated.iter_batches(batch_format="pyarrow", batch_size=None):
                if write == "jsonl":
                    for i, row in enumerate(batch.to_pylist()):
                        row.update((name, json.loads(row[name])) for name in decoded if row[name] is not None)
                        if originals is not None:  # the input record as it was, plus the new fields
                            original = originals[records + i]
                            row = {**original, **{k: row[k] for k in added}}
                            if not isinstance(original.get(text_column), (str, type(None))):
                                row["error"] = (f"ValueError: {text_column!r} must be a string, got "
                                                f"{type(original[text_column]).__name__}")
                        f.write((json.dumps(row, ensure_ascii=False, default=str) + "\n").encode())
                else:
                    writer = writer or pq.ParquetWriter(f, batch.schema)
                    writer.write_table(batch)
                records += batch.num_rows
                errors += batch.num_rows - batch.column("error").null_count
            if write == "parquet":  # an empty input still gives a readable file
                writer = writer or pq.ParquetWriter(f, pa.schema([*table.schema, *output_fields(extensions)]))
                writer.close()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, output_path)
    return Written(records, errors)
