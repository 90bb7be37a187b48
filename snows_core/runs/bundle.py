"""Run bundles: one folder per run that moves a result between machines.

Layout of an exported bundle::

    bundle.json         format, run row (id, status, times, library version), spec, result, environment
    layers.csv          the per-layer report, one row per layer (also layers.json)
    events.jsonl        every stored event, oldest first
    model.safetensors   pruned weights (fp32, exactly those that were scored)
    masks.safetensors   masks, True = kept
    report.json         the worker's own report

`import_bundle` type-checks every field, then, under the store's lock, moves the artifacts into place
and inserts the run, its events and its result in one transaction (removing the artifacts if that
fails), so a failed or concurrent import leaves no run, folder or half of either behind. `import_zip`
checks an archive's entries (count, size, names, links, encryption) before extracting any. The
run keeps its id and records where it came from; its result carries the calibration sample, evaluation
subset and environment that decide whether it is comparable with local runs.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from snows_core.runs.schema import check_event, check_report, check_result, check_run
from snows_core.runs.spec import RunSpec
from snows_core.runs.store import FINAL, RunStore

__all__ = ["export_bundle", "export_zip", "import_bundle", "import_zip", "BUNDLE_FORMAT"]

BUNDLE_FORMAT = "snows-run-bundle/1"
RUN_ID = re.compile(r"\d{8}-\d{6}-[\w.-]+")  # a store's own ids; nothing that leaves $SNOWS_HOME/runs/
MAX_ENTRIES = 16
MAX_UNPACKED_BYTES = 4 << 30  # ViT-L/16's fp32 weights and masks fit
MAX_RATIO = 50  # a real bundle unpacks to a few times its zip (pruned weights and masks compress); bombs to 100s
ARTIFACTS = ("model.safetensors", "masks.safetensors", "report.json")
LAYER_COLUMNS = (
    "name",
    "sparsity",
    "loss_before",
    "loss_warm",
    "loss_after",
    "newton_steps",
    "cg_iters",
    "seconds",
    "peak_mem",
    "kept",
    "numel",
)


def export_bundle(store: RunStore, run_id: str, out: str | Path) -> Path:
    """Write the bundle of a finished run into the folder `out` (created; must be empty if it exists)."""
    out = Path(out)
    run = store.get(run_id)
    if run["status"] not in FINAL:
        raise ValueError(f"run {run_id} is {run['status']}; export it when it has finished")
    if out.exists() and not out.is_dir():
        raise ValueError(f"export folder {out} is a file; give a new or empty folder")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"export folder {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    result = store.result(run_id)
    row = {k: run[k] for k in ("id", "status", "version", "sweep_id", "created", "started", "finished", "error")}
    bundle = {
        "format": BUNDLE_FORMAT,
        "run": {**row, "executor": run["executor"], "scheduler": run["scheduler"], "spec_hash": run["spec_hash"]},
        "spec": run["spec"],
        "result": result,
        "environment": (result or {}).get("environment"),
    }
    (out / "bundle.json").write_text(json.dumps(bundle, indent=2))
    with open(out / "events.jsonl", "w") as f:
        for event in store.events(run_id):
            f.write(json.dumps({k: v for k, v in event.items() if k != "id"}) + "\n")
    source = store.run_dir(run_id)
    for name in ARTIFACTS:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    layers = _layers(source / "report.json")
    (out / "layers.json").write_text(json.dumps(layers, indent=2))
    with open(out / "layers.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, LAYER_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(layers)
    return out


def import_bundle(store: RunStore, folder: str | Path) -> str:
    """Add the run in bundle `folder` to `store` (with its events, result and artifacts); returns its id.

    Every field is type-checked first (`snows_core.runs.schema`); then, under the store's lock, the
    artifacts are copied to a staging folder, renamed into place and the rows inserted in one
    transaction: two imports of one bundle give one run and one error, and a failure leaves nothing.
    """
    folder = Path(folder)
    run, events, result = _read_bundle(folder)
    with store.lock():
        if store.has(run["id"]):
            raise ValueError(f"run {run['id']!r} is already in {store.path}")
        target = store.run_dir(run["id"])
        shutil.rmtree(target, ignore_errors=True)  # the leftovers of an import killed half-way
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".import-"))
        try:
            for name in ARTIFACTS:
                if (folder / name).is_file() and not (folder / name).is_symlink():
                    shutil.copyfile(folder / name, staging / name)
            staging.rename(target)
            store.import_run(run, events, result)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return run["id"]


def export_zip(store: RunStore, run_id: str) -> bytes:
    """The run's export bundle as a zip archive (one folder named after the run)."""
    with tempfile.TemporaryDirectory(prefix="snows-export-") as tmp:
        folder = export_bundle(store, run_id, Path(tmp) / run_id)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.iterdir()):
                archive.write(path, f"{run_id}/{path.name}")
    return buffer.getvalue()


def import_zip(store: RunStore, data: bytes) -> str:
    """Import the one bundle in a zip archive (an Export download), checking every entry before any byte
    is extracted: at most `MAX_ENTRIES` plain, unencrypted files with relative names inside one folder,
    `MAX_UNPACKED_BYTES` in all; each is then extracted with its declared size as a hard limit."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as err:
        raise ValueError(f"not a zip archive: {err}") from None
    with archive:
        entries = _checked_entries(archive)
        with tempfile.TemporaryDirectory(prefix="snows-import-") as tmp:
            for entry in entries:
                _extract_limited(archive, entry, Path(tmp) / Path(entry.filename).name)
            return import_bundle(store, tmp)


def _checked_entries(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    entries = [e for e in archive.infolist() if not e.is_dir()]
    if len(entries) > MAX_ENTRIES:
        raise ValueError(f"the archive holds {len(entries)} files; a bundle has at most {MAX_ENTRIES}")
    folders = {PurePosixPath(e.filename).parent for e in entries}
    for entry in entries:
        path = PurePosixPath(entry.filename)
        if path.is_absolute() or ".." in path.parts or "\\" in entry.filename or len(path.parts) > 2:
            raise ValueError(f"the archive entry {entry.filename!r} is not a bundle file name")
        if entry.flag_bits & 0x1:
            raise ValueError(f"the archive entry {entry.filename!r} is encrypted")
        if stat.S_ISLNK(entry.external_attr >> 16):
            raise ValueError(f"the archive entry {entry.filename!r} is a symbolic link")
    if len(folders) != 1 or sum(PurePosixPath(e.filename).name == "bundle.json" for e in entries) != 1:
        raise ValueError("the archive must hold exactly one run bundle (one folder with one bundle.json)")
    unpacked, packed = sum(e.file_size for e in entries), sum(e.compress_size for e in entries)
    if unpacked > MAX_UNPACKED_BYTES or unpacked > MAX_RATIO * max(packed, 1 << 20):
        raise ValueError(f"the archive would unpack {packed / 2**20:.1f} MiB into {unpacked / 2**20:.0f} MiB: refused")
    return entries


def _extract_limited(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, out: Path) -> None:
    """Copy one entry, refusing more bytes than its header declares (a lying header is a bomb)."""
    with archive.open(entry) as source, open(out, "wb") as sink:
        written = 0
        while chunk := source.read(1 << 20):
            written += len(chunk)
            if written > entry.file_size:
                raise ValueError(f"the archive entry {entry.filename!r} unpacks beyond its declared size")
            sink.write(chunk)


def _read_bundle(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]:
    """The bundle's run row, events and result, every field type-checked; nothing is written."""
    manifest = folder / "bundle.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{folder} is not a run bundle: it has no bundle.json")
    bundle = _json(manifest.read_text(), "bundle.json")
    if not isinstance(bundle, dict):
        raise ValueError(f"bundle.json must be an object; got {type(bundle).__name__}")
    if bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"bundle format must be {BUNDLE_FORMAT!r}; got {bundle.get('format')!r}")
    if "spec" not in bundle:
        raise ValueError("bundle.json lacks spec")
    check_run(bundle.get("run"))
    run = {**bundle["run"], "spec": bundle["spec"], "imported_from": _origin(bundle, folder)}
    if not RUN_ID.fullmatch(run["id"]) or ".." in run["id"]:
        raise ValueError(f"bundle run id {run['id']!r} is not a run id (such as 20261126-142233-resnet20-a1b2c3)")
    if not isinstance(run["spec"], dict):
        raise ValueError(f"bundle spec must be an object; got {type(run['spec']).__name__}")
    RunSpec.from_dict(run["spec"])
    check_result(bundle.get("result"), run["status"])
    report = folder / "report.json"
    if report.is_file() and not report.is_symlink():
        check_report(_json(report.read_text(), "report.json"))
    events_file = folder / "events.jsonl"
    lines = events_file.read_text().splitlines() if events_file.is_file() and not events_file.is_symlink() else []
    events = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            events.append(_json(line, f"events.jsonl line {number}"))
            check_event(events[-1], number)
    return run, events, bundle.get("result")


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not JSON: {err}") from None


def _layers(report: Path) -> list[dict[str, Any]]:
    """The per-layer rows of a run's report.json: none when it is missing or not of the report's shape."""
    try:
        content = json.loads(report.read_text()) if report.is_file() else {}
        check_report(content)
    except ValueError:  # an import from before report.json was checked: export the rest as it is
        return []
    return content.get("layers", [])


def _origin(bundle: dict[str, Any], folder: Path) -> str:
    host = (bundle.get("environment") or {}).get("host") or "unknown host"
    return f"{host}:{folder.resolve()}"
