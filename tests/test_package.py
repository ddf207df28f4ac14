"""`spacy package` builds an installable wheel of a pipeline with a `gliner2` component; installed into
a fresh virtual environment, it loads offline by its package name and annotates as the original."""
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import spacy

TEXT = "Ada Lovelace met Charles Babbage in London."
CHECK = """
import json, spacy
nlp = spacy.load("en_gliner2_tiny")
doc = nlp({text!r})
print(json.dumps({{"package": nlp.meta["name"], "ents": [[e.start_char, e.end_char, e.label_] for e in doc.ents],
                  "scores": doc.spans["gliner2"].attrs["scores"], "cats": doc.cats}}))
"""


def test_spacy_package_wheel_installs_and_loads_offline(bert_checkpoint, tmp_path):
    pytest.importorskip("build")
    model = shutil.copytree(bert_checkpoint, tmp_path / "checkpoint")
    nlp = spacy.blank("en")
    nlp.add_pipe("gliner2", config={"model": str(model), "entities": ["person", "city"],
                                    "classifications": {"topic": ["science", "travel"]}})
    nlp.meta.update(name="gliner2_tiny", version="0.0.1")
    nlp.to_disk(tmp_path / "pipeline")
    expected = nlp(TEXT)
    shutil.rmtree(model)  # the package must carry its own weights

    (tmp_path / "dist").mkdir()
    subprocess.run([sys.executable, "-m", "spacy", "package", str(tmp_path / "pipeline"), str(tmp_path / "dist"),
                    "--build", "wheel"], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").rglob("en_gliner2_tiny-0.0.1-*.whl"))
    meta = json.loads(next((tmp_path / "dist").rglob("meta.json")).read_text())
    assert any(r.startswith("spacy-gliner2") for r in meta["requirements"])  # found through our entry point

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    # the dependencies (torch, spacy, spacy_gliner2, ...) come from this environment, after the venv's own
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    Path(site, "zz_project_env.pth").write_text(f"import site; site.addsitedir({ours!r})\n")

    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([str(python), "-c", CHECK.format(text=TEXT)], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["package"] == "gliner2_tiny"
    assert got["ents"] == [[e.start_char, e.end_char, e.label_] for e in expected.ents]
    assert got["scores"] == pytest.approx(expected.spans["gliner2"].attrs["scores"], abs=1e-5)
    assert got["cats"] == pytest.approx(expected.cats, abs=1e-5)
