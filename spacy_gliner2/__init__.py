"""spacy-gliner2: GLiNER2 zero-shot extraction as a spaCy component."""
from .schema import Schema, SchemaError

__version__ = "0.1.0"
__all__ = ["Schema", "SchemaError", "__version__"]
