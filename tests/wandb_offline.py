"""Read an offline W&B run's own files (no server): the records W&B wrote and the media it saved."""
from __future__ import annotations

import struct
from pathlib import Path


def wandb_records(run_dir: Path) -> list:
    """The protobuf records of an offline W&B run (`run-<id>.wandb`: W&B's header, then LevelDB-log
    framed records in 32 KiB blocks), read without a server."""
    from wandb.proto import wandb_internal_pb2 as pb

    [path] = run_dir.glob("run-*.wandb")
    data, pos, block, buf, records = path.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B", data[:7]
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        buf, pos = buf + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST chunk of a record
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def wandb_run(job_dir: Path) -> dict:
    """Group, name, tags, job type, exit code, history and summary keys of a job's offline W&B run,
    the media files it saved (paths under ``files/media``) and the artifacts it logged (name ->
    [(path in the artifact, the local file W&B will upload it from)])."""
    [run_dir] = (job_dir / "wandb").glob("offline-run-*")
    media = run_dir / "files" / "media"
    out: dict = {"history": set(), "summary": set(), "exit_code": None,
                 "media": sorted(p.relative_to(media).as_posix() for p in media.rglob("*") if p.is_file()),
                 "artifacts": {}}
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out |= {"group": run.run_group, "name": run.display_name, "tags": list(run.tags),
                    "job_type": run.job_type, "config": {i.key for i in run.config.update}}
        elif kind == "history":
            out["history"] |= {i.key or "/".join(i.nested_key) for i in record.history.item}
        elif kind == "summary":
            out["summary"] |= {i.key or "/".join(i.nested_key) for i in record.summary.update}
        elif kind == "artifact":
            out["artifacts"][record.artifact.name] = [(c.path, c.local_path)
                                                      for c in record.artifact.manifest.contents]
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out
