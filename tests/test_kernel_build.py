"""Building the compiled kernels (spacy_gliner2/runtime/native.py): cached by source and flags, a
failure remembered across processes, a private cache folder, the `kernels` command. Runs on any
machine with a C compiler (building needs no AVX-512; running the kernels does: tests/test_native.py)."""
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from spacy_gliner2.runtime import native

COMPILER = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
needs_compiler = pytest.mark.skipif(COMPILER is None, reason="no C compiler")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty private cache folder; the process's decision about the library forgotten before and after."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SPACY_GLINER2_CACHE", str(cache))
    native._library.cache_clear()
    yield cache
    native._library.cache_clear()


def counting_compiler(tmp_path, fails: bool):
    """A "compiler" script that logs each call and fails (or runs the real one)."""
    log, script = tmp_path / "calls.log", tmp_path / "fakecc"
    body = "echo 'error: no such luck' >&2; exit 1" if fails else f'exec {COMPILER} "$@"'
    script.write_text(f"#!/bin/sh\necho call >> {log}\n{body}\n")
    script.chmod(0o755)
    return script, log


def test_a_failed_build_warns_once_and_is_remembered_across_processes(fresh, monkeypatch, tmp_path):
    script, log = counting_compiler(tmp_path, fails=True)
    monkeypatch.setenv("CC", str(script))
    with pytest.warns(RuntimeWarning, match="could not be built.*no such luck"):
        assert native._library() is None
    assert native._library() is None  # decided once per process
    failed = list(fresh.glob("kernels-*.failed"))
    assert len(failed) == 1 and "no such luck" in failed[0].read_text()
    # another process: no new compiler call, no warning
    code = "import warnings; warnings.simplefilter('error'); from spacy_gliner2.runtime import native; print(native._library())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert done.returncode == 0 and done.stdout.strip() == "None", done.stderr
    assert log.read_text().count("call") == 1
    assert native.status()["build"].startswith("failed (remembered")
    with pytest.raises(RuntimeError, match="no such luck"):  # an explicit build retries
        native.build_now()
    assert log.read_text().count("call") == 2
    with pytest.raises(RuntimeError, match="not available"):
        native.packed_attention(*[torch.zeros((1, 2))] * 3, [1], 1, None, None, 1.0)


@needs_compiler
def test_a_retried_build_that_succeeds_clears_the_failure(fresh, monkeypatch, tmp_path):
    script, _ = counting_compiler(tmp_path, fails=True)
    monkeypatch.setenv("CC", str(script))
    with pytest.raises(RuntimeError):
        native.build_now()
    script.write_text(f'#!/bin/sh\nexec {COMPILER} "$@"\n')  # the same compiler path now works
    built = native.build_now()
    assert built.exists() and not list(fresh.glob("*.failed"))
    assert native.status()["build"] == f"built: {built}"


def test_without_a_compiler_torch_takes_over_quietly(fresh, monkeypatch, tmp_path, recwarn):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no cc, no gcc
    assert native._library() is None
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert not fresh.exists()
    assert native.status()["build"] == "none (no compiler)"


@needs_compiler
def test_builds_are_cached_by_source_and_flags_and_replace_older_ones(monkeypatch, tmp_path):
    folder = tmp_path / "cache"
    first = native._build(folder)
    stamp = first.stat().st_mtime_ns
    assert native._build(folder) == first and first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    legacy, young = folder / "attention_scores-0123456789abcdef.so", folder / "kernels-fedcba9876543210.so"
    for path in (legacy, young, folder / "notes.txt"):
        path.write_bytes(b"")
    day_ago = time.time() - 86400
    for path in (first, legacy, folder / "notes.txt"):
        os.utime(path, (day_ago, day_ago))
    monkeypatch.setattr(native, "FLAGS", native.FLAGS + ["-DBLOCK=64"])
    second = native._build(folder)
    assert second != first  # other flags: another file; the old builds are gone, a young one stays
    assert sorted(p.name for p in folder.iterdir()) == sorted([second.name, young.name, "notes.txt"])


def test_the_cache_folder_is_created_private_and_a_shared_one_is_refused(fresh, monkeypatch, tmp_path):
    script, log = counting_compiler(tmp_path, fails=True)
    monkeypatch.setenv("CC", str(script))
    with pytest.raises(RuntimeError):
        native._build(fresh)
    assert fresh.stat().st_mode & 0o777 == 0o700
    fresh.chmod(0o777)  # anyone could plant a library here
    with pytest.raises(PermissionError, match="not private to this user.*chmod go-w"):
        native._build(fresh, retry=True)
    assert log.read_text().count("call") == 1  # refused before compiling or loading anything
    with pytest.warns(RuntimeWarning, match="not private"):
        assert native._library() is None


def test_the_kernels_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(native.ENABLE_VARIABLE, "0")
    assert native._unavailable_because() == f"{native.ENABLE_VARIABLE}=0"
    assert native.status()["fp32 inputs"] == f"{native.ENABLE_VARIABLE}=0"


def test_the_kernels_command_reports_and_builds(fresh, monkeypatch, tmp_path):
    script, _ = counting_compiler(tmp_path, fails=True)
    env = {**os.environ, "CC": str(script)}
    done = subprocess.run([sys.executable, "-m", "spacy_gliner2", "kernels"], capture_output=True, text=True, env=env)
    assert done.returncode == 0
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines())
    assert set(lines) == {"fp32 inputs", "bf16 inputs", "cache folder", "compiler", "build"}
    assert lines["cache folder"].strip() == str(fresh) and lines["build"].strip().startswith("not built yet")
    done = subprocess.run([sys.executable, "-m", "spacy_gliner2", "kernels", "--build"], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 1 and done.stderr.strip().startswith("error: the kernels could not be built")
