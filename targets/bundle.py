"""Deployment bundles: a directory written atomically, with a manifest that hashes every file.

Layout of a bundle ``DIR/``::

    manifest.json     format "snncc-bundle", schema version, snncc version, target, pipeline, I/O spec and input
                      encoding, sha256 of every other file, resources per core and per chip, synaptic operations
                      per inference and the energy they imply (with the per-operation figure's source)
    README.md         a short page for the hardware team
    hw.snn            the legalized graph (the target's emulator runs it)
    source.snn        the snn-level graph before legalization (``verify`` compares against it)
    ...               the target's own files (netx HDF5 for Loihi)

:func:`write_bundle` builds everything in a temporary directory beside ``DIR`` (``.DIR.RANDOM.tmp``) and renames
it to ``DIR`` at the end; on any failure the temporary directory is removed and nothing is left at ``DIR``. An
existing bundle at ``DIR`` is replaced (moved aside, then removed after the rename); any other existing,
non-empty ``DIR`` is refused. :func:`read_bundle` validates the manifest and re-hashes every file: a modified or
missing file is a :class:`~snncc.targets.base.TargetError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from snncc import __version__
from snncc.errors import FormatError
from snncc.fileio import write_json, write_text
from snncc.ir import Graph, load, save
from snncc.targets.base import TargetError

FORMAT = "snncc-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
README = "README.md"
HW_GRAPH = "hw.snn"
SOURCE_GRAPH = "source.snn"
_REQUIRED = ("format", "schema_version", "snncc_version", "target", "pipeline", "io", "files", "resources",
             "synops_per_inference", "energy")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _temporary_directory(final: Path) -> Path:
    while True:
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        try:
            tmp.mkdir(mode=0o777)
            return tmp
        except FileExistsError:
            continue


def write_bundle(directory: str | Path, hw_graph: Graph, source_graph: Graph,
                 write_target_files: Callable[[Path], list[str]], manifest: dict, readme: str) -> Path:
    """Write a bundle atomically. ``write_target_files(tmpdir)`` writes the target's own files and returns their
    names; ``manifest`` holds every field but ``format``, ``schema_version``, ``snncc_version`` and ``files``,
    which are filled in here."""
    final = Path(directory)
    if final.exists() and not (final / MANIFEST).is_file() and (not final.is_dir() or any(final.iterdir())):
        raise TargetError(f"{final} exists and is not a bundle; remove it or choose another output directory")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_directory(final)
    aside = None
    try:
        save(hw_graph, tmp / HW_GRAPH)
        save(source_graph, tmp / SOURCE_GRAPH)
        names = [HW_GRAPH, SOURCE_GRAPH, *write_target_files(tmp)]
        write_text(tmp / README, readme)
        names.append(README)
        full = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "snncc_version": __version__, **manifest,
                "files": {name: sha256_of(tmp / name) for name in sorted(names)}}
        write_json(full, tmp / MANIFEST)
        if final.exists():
            aside = final.with_name(f".{final.name}.{secrets.token_hex(4)}.old")
            os.replace(final, aside)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None and not final.exists():
            os.replace(aside, final)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return final


@dataclass
class Bundle:
    """A bundle read back and checked: its directory and manifest."""

    directory: Path
    manifest: dict

    def hw_graph(self) -> Graph:
        return load(self.directory / HW_GRAPH)

    def source_graph(self) -> Graph:
        return load(self.directory / SOURCE_GRAPH)


def read_bundle(directory: str | Path) -> Bundle:
    """Read and validate a bundle: its manifest's format, schema and fields, and the sha256 of every file."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise TargetError(f"{directory} is not a bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not a valid manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FormatError(f"{path}: not an snncc bundle manifest (format {manifest.get('format')!r})"
                          if isinstance(manifest, dict) else f"{path}: not an snncc bundle manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise FormatError(f"{path}: bundle schema version {manifest.get('schema_version')!r}; this snncc reads "
                          f"version {SCHEMA_VERSION}")
    missing_keys = [k for k in _REQUIRED if k not in manifest]
    if missing_keys:
        raise FormatError(f"{path}: manifest lacks {', '.join(missing_keys)}")
    files = manifest["files"]
    if not isinstance(files, dict) or HW_GRAPH not in files or SOURCE_GRAPH not in files:
        raise FormatError(f"{path}: manifest 'files' must list {HW_GRAPH} and {SOURCE_GRAPH} with their sha256")
    problems = []
    for name, digest in files.items():
        file = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            problems.append(f"{name}: not a path inside the bundle")
        elif not file.is_file():
            problems.append(f"{name}: missing")
        elif sha256_of(file) != digest:
            problems.append(f"{name}: modified (sha256 {sha256_of(file)[:16]}..., the manifest says "
                            f"{str(digest)[:16]}...)")
    if problems:
        raise TargetError(f"bundle {directory} does not match its manifest:\n  " + "\n  ".join(problems) +
                          "\nre-emit it with `snncc emit`")
    return Bundle(directory, manifest)
