"""``lightbox-server db backup DIR`` and ``db restore DIR``: the relay's database and the two
files beside it (docs/OPERATIONS.md "Backups"), taken together and put back together.

A backup is a folder (mode 0700, every file 0600):

* ``lightbox.dump``: ``pg_dump --format=custom`` of the relay's database, one consistent
  snapshot, so the relay keeps running meanwhile;
* ``token-key`` and ``trusted-orgs.json``, copied from where the settings say they are (a
  missing one is said, and left out);
* ``backup.json``: the format, the Lightbox release, the schema revision the dump holds (read
  from the dump's own ``alembic_version``), the time (UTC) and each file's size and SHA-256.

The hashes catch a damaged or altered file, not a forger who can also rewrite backup.json:
keep backups where only IT writes. The schema revision is checked against the dump itself at
restore, so an edited manifest cannot pass a dump of another revision off.

The dump is taken and restored with the PostgreSQL tools that come with pgserver (a main
dependency, PostgreSQL 16): the system's may be older than the embedded cluster. A password
in DATABASE_URL is given to them in ``PGPASSWORD``, never on a command line, which every user
of the host can read.

A backup is written in a hidden folder beside DIR and renamed to DIR at the end; a restore into
the embedded Postgres is made in ``<data_dir>/restore-in-progress/pg`` and renamed to
``<data_dir>/pg`` once restored and stopped. Either way a command that fails or is interrupted
leaves nothing under the final name that looks whole: a relay never starts on half a restore.

Exceptions: :class:`BackupError` (nothing was done, or what was done was undone; the message
says why). server/manage.py prints it in one line, exit status 2.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from server import migrations
from server.embedded import postmaster_pid, running
from server.settings import Settings

__all__ = ["Backup", "BackupError", "Database", "Restored", "Taken", "backup", "read_backup",
           "restore"]

FORMAT = 1
MANIFEST = "backup.json"
DUMP = "lightbox.dump"
TOKEN_KEY = "token-key"  # noqa: S105 (a file name)
TRUSTED_ORGS = "trusted-orgs.json"
IN_PROGRESS = "restore-in-progress"

# What a relay restored without each file does (the relay says the same when it starts).
_WITHOUT = {
    TOKEN_KEY: "a relay restored from it makes a new token key, and every device and IT "
               "administrator logs in again",
    TRUSTED_ORGS: "a relay restored from it trusts no organisation until `lightbox-server org "
                  "trust` is run again",
}


class BackupError(Exception):
    """Nothing was done, or what was done was undone; the message says why (exit status 2)."""


class Database(Protocol):
    """server/manage.py's ``_database``: the relay's database (DATABASE_URL, or the embedded
    cluster of ``settings.data_dir``, attached to or started, and made only with ``create``)."""

    def __call__(self, settings: Settings, *, create: bool = ...
                 ) -> AbstractContextManager[str]: ...


# --- backup ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Taken:
    """What ``db backup`` wrote, and the relay files that were not there to copy."""

    folder: Path
    schema: str
    sizes: Mapping[str, int]
    missing: Mapping[str, Path]
    removed: Sequence[tuple[Path, str]] = ()  # and the backup's name each was for

    def __str__(self) -> str:
        files = [f"{DUMP} ({_size(self.sizes[DUMP])})",
                 *(name for name in (TOKEN_KEY, TRUSTED_ORGS) if name in self.sizes)]
        return (f"backup of the relay's database (schema {self.schema}) in {self.folder}: "
                + ", ".join(files))

    def notes(self) -> list[str]:
        return [*(f"removed {path}: what an earlier backup into {name} left when it was "
                  "stopped before it finished (a partial dump, perhaps a copy of token-key)"
                  for path, name in self.removed),
                *(f"there was no {name} at {path}: the backup has none, so {_WITHOUT[name]}"
                  for name, path in self.missing.items())]


# What a backup writes into while it runs, beside its folder: NAME, the process id, tempfile's
# eight characters.
_PARTIAL = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)\.[a-z0-9_]{8}\.partial")


def _interrupted(parent: Path) -> list[tuple[Path, str]]:
    """The folders earlier backups into ``parent`` were writing when they were stopped before
    they finished (killed, or the host lost power), with the name each was for: a hidden
    ``.NAME.PID.*.partial`` folder, holding nothing but what a backup writes, whose process is
    gone. Each may hold a partial dump and a copy of token-key, as secret as a backup, which
    nothing else would ever remove. A backup still running keeps its own."""
    found = []
    for path in parent.glob(".*.partial"):
        match = _PARTIAL.fullmatch(path.name)
        if (match is None or path.is_symlink() or not path.is_dir()
                or running(int(match["pid"]))):
            continue
        try:
            names = {p.name for p in path.iterdir()}
        except OSError:
            continue  # not ours to read (another user's): left alone
        if names <= {DUMP, TOKEN_KEY, TRUSTED_ORGS, MANIFEST}:
            found.append((path, match["name"]))
    return sorted(found)


def backup(folder: Path, settings: Settings, database: Database, *,
           now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> Taken:
    """Dump the relay's database and copy its two files into ``folder``, which must not exist
    or be empty. The cluster is attached to, never stopped under a running relay."""
    target = folder.absolute()
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise BackupError(f"{target} is not a folder: a backup goes into a new folder or an "
                          "empty one")
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"{target} is not empty: a backup goes into a new folder or an empty "
                          "one, and nothing was written")
    target.parent.mkdir(parents=True, exist_ok=True)
    removed = []
    for path, name in _interrupted(target.parent):
        try:
            shutil.rmtree(path)
        except OSError as exc:
            raise BackupError(f"{path}, what an earlier backup into {name} left when it was "
                              f"stopped before it finished, could not be removed "
                              f"({exc.strerror}): remove it, and back up again; nothing was "
                              "written") from exc
        removed.append((path, name))
    # Named with this process's id, so that a later backup knows it from one still running.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".partial",
                                    dir=target.parent))
    try:
        staging.chmod(0o700)  # whatever the umask: the dump and the key are secret
        with database(settings) as dsn:
            # Connected first: a database that cannot be reached is said as every command
            # says it (server/manage.py), and one without a schema before a dump is taken.
            if asyncio.run(_revision(dsn)) is None:
                raise _no_schema(settings)
            _pg_dump(dsn, staging / DUMP, _where(settings))
        schema = _dump_revision(staging / DUMP)  # the dump's own, whatever happened since
        if schema is None:
            raise _no_schema(settings)
        entries = {DUMP: _entry(staging / DUMP)}
        missing: dict[str, Path] = {}
        for name, source in ((TOKEN_KEY, settings.token_key_path),
                             (TRUSTED_ORGS, settings.trusted_orgs_path)):
            try:
                data = source.read_bytes()
            except FileNotFoundError:
                missing[name] = source.absolute()
                continue
            _write_new(staging / name, data, 0o600)
            entries[name] = _entry(staging / name)
        manifest = {
            "format": FORMAT,
            "lightbox": _release(),
            "schema": schema,
            "taken_at": now().astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "files": entries,
        }
        _write_new(staging / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode(), 0o600)
        _fsync(staging)
        try:
            os.rename(staging, target)  # replaces an empty folder, never a full one
        except OSError as exc:
            raise BackupError(f"{target} could not be made ({exc.strerror}): nothing was "
                              "written") from exc
        _fsync(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Taken(target, schema, {name: e["bytes"] for name, e in entries.items()}, missing,
                 removed)


def _no_schema(settings: Settings) -> BackupError:
    return BackupError(f"{_where(settings)} holds no relay schema yet (no alembic_version "
                       "table): there is nothing to back up")


def _pg_dump(dsn: str, dump: Path, where: str) -> None:
    url, env = _libpq(dsn)
    # Made here first, so that its mode is 0600 whatever the umask (pg_dump opens it for
    # writing and keeps the mode). --file, not stdout: to stdout, even a file, pg_dump 16.2
    # wrote a dump twice the size, its table of contents again at the end (116 kB against
    # 230 kB, measured on 2026-12-07).
    _write_new(dump, b"", 0o600)
    done = subprocess.run([str(_tool("pg_dump")), "--format=custom", "--file", str(dump),
                           "--dbname", url], capture_output=True, env=env,
                          stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise _dump_failed(_said(done.stderr, env), where)
    with dump.open("rb") as f:
        os.fsync(f.fileno())


def _dump_failed(said: str, where: str) -> BackupError:
    """What pg_dump's stderr means, in one sentence."""
    if "server version mismatch" in said:
        # pg_dump refuses a server of a later major version, and says both on the next line:
        # "pg_dump: detail: server version: 17.2; pg_dump version: 16.2".
        detail = said.partition("server version: ")[2]
        server = detail.partition(";")[0].strip() or "?"
        ours = detail.partition("pg_dump version: ")[2].split()[:1] or ["16"]
        return BackupError(
            f"{where} runs PostgreSQL {server}, newer than the pg_dump that comes with the "
            f"relay ({ours[0]}): take the dump with a pg_dump of that server's version, as "
            "docs/OPERATIONS.md \"Backups\" says")
    return BackupError(f"pg_dump could not dump {where}: {_first_error(said, 'pg_dump')}")


def _entry(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()  # an integrity check of our own files, not a protocol's
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} bytes"
    if n < 1_000_000:
        return f"{n / 1000:.0f} kB"
    if n < 1_000_000_000:
        return f"{n / 1_000_000:.1f} MB"
    return f"{n / 1_000_000_000:.1f} GB"


def _release() -> str:
    try:
        return importlib.metadata.version("lightbox")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --- reading a backup -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Backup:
    """A backup folder whose files all match its manifest."""

    folder: Path
    schema: str
    taken_at: dt.datetime
    lightbox: str
    files: frozenset[str]

    def path(self, name: str) -> Path:
        return self.folder / name


def read_backup(folder: Path) -> Backup:
    """The backup in ``folder``, checked: its manifest, every file's SHA-256, and the schema
    revision, which must be one of this release's and the one the dump holds."""
    folder = folder.absolute()
    if not folder.is_dir():
        raise BackupError(f"there is no folder {folder}")
    manifest_path = folder / MANIFEST
    try:
        raw = json.loads(manifest_path.read_bytes())
    except FileNotFoundError:
        raise BackupError(f"{folder} holds no backup: there is no {MANIFEST} in it (`lightbox-"
                          "server db backup DIR` writes one)") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{manifest_path} cannot be read as a backup manifest ({exc})"
                          ) from None
    manifest = _manifest(raw, manifest_path)
    for name, entry in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise BackupError(f"{path} is missing, though {MANIFEST} names it: the backup is "
                              "incomplete; restore another one")
        if _entry(path)["sha256"] != entry:
            raise BackupError(f"{path} is not the file {MANIFEST} names (its SHA-256 differs): "
                              "the backup is damaged or was altered; restore another one")
    known = migrations.revisions()
    if manifest.schema not in known:
        raise BackupError(
            f"the backup's database is at schema {manifest.schema}, which this release does "
            f"not have (its last is {migrations.head_revision()}): it was taken by a newer "
            f"release (Lightbox {manifest.lightbox}); restore it with that release")
    held = _dump_revision(folder / DUMP)
    if held != manifest.schema:
        raise BackupError(f"{folder / DUMP} holds schema {held or 'none'}, not the "
                          f"{manifest.schema} that {MANIFEST} says: the backup was altered; "
                          "restore another one")
    return Backup(folder, manifest.schema, manifest.taken_at, manifest.lightbox,
                  frozenset(manifest.files))


@dataclasses.dataclass(frozen=True)
class _Manifest:
    schema: str
    taken_at: dt.datetime
    lightbox: str
    files: dict[str, str]  # name: SHA-256


def _manifest(raw: Any, path: Path) -> _Manifest:
    def bad(what: str) -> BackupError:
        return BackupError(f"{path} is not a backup manifest of Lightbox's: {what}")

    if not isinstance(raw, dict):
        raise bad("not a JSON object")
    lightbox = raw.get("lightbox")
    lightbox = lightbox if isinstance(lightbox, str) else "unknown"
    if raw.get("format") != FORMAT:
        raise BackupError(f"{path} is of backup format {raw.get('format')!r}, which this "
                          f"release does not read: restore it with the release that took it "
                          f"(Lightbox {lightbox})")
    schema, taken_at, files = raw.get("schema"), raw.get("taken_at"), raw.get("files")
    if not isinstance(schema, str) or not schema:
        raise bad("no schema revision")
    try:
        when = dt.datetime.fromisoformat(taken_at) if isinstance(taken_at, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise bad("no time (taken_at, UTC)")
    if not isinstance(files, dict) or DUMP not in files:
        raise bad(f"it names no {DUMP}")
    hashes: dict[str, str] = {}
    for name, entry in files.items():
        # Only the names a backup writes: a manifest never sends restore elsewhere.
        if name not in {DUMP, TOKEN_KEY, TRUSTED_ORGS}:
            raise bad(f"it names a file {name!r}, which a backup does not hold")
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(digest, str):
            raise bad(f"no SHA-256 for {name}")
        hashes[name] = digest
    return _Manifest(schema, when, lightbox, hashes)


def _dump_revision(dump: Path) -> str | None:
    """The schema revision in the dump's own ``alembic_version`` (None: it has none)."""
    done = subprocess.run([str(_tool("pg_restore")), "--data-only", "--table=alembic_version",
                           "--file=-", str(dump)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise BackupError(f"{dump} is not a dump pg_restore can read: "
                          f"{_first_error(done.stderr, 'pg_restore')}")
    lines = done.stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("COPY public.alembic_version") and i + 2 < len(lines) \
                and lines[i + 2] == "\\.":
            return lines[i + 1].strip()
    return None


# --- restore --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Restored:
    """What ``db restore`` did."""

    backup: Backup
    where: str
    upgraded: migrations.Upgraded | None
    missing: Mapping[str, Path]

    def __str__(self) -> str:
        schema = self.backup.schema
        if self.upgraded is not None and self.upgraded.after != schema:
            schema += f", upgraded to {self.upgraded.after}"
        files = [name for name in (TOKEN_KEY, TRUSTED_ORGS) if name in self.backup.files]
        with_files = f", with its {' and '.join(files)}" if files else ""
        taken = self.backup.taken_at.astimezone(dt.UTC)
        return (f"restored the backup of {taken:%Y-%m-%d %H:%M} UTC (schema "
                f"{schema}) into {self.where}{with_files}\n"
                "next: start the relay; from IT's workstation, give it the newest revocation "
                "list kept (`lightbox-admin revocations restore FILE`, docs/OPERATIONS.md "
                "\"What a restore brings back\"); then take a new audit anchor "
                "(`lightbox-server audit head`)")

    def notes(self) -> list[str]:
        return [f"the backup has no {name}, so none was put at {path}: {_WITHOUT[name]}"
                for name, path in self.missing.items()]


def restore(folder: Path, settings: Settings, database: Database) -> Restored:
    """Put the backup in ``folder`` into a relay that has no database yet, and its files in
    place. Refused, with nothing changed, if the backup does not check out, the database is
    not empty, or a file in place differs from the backup's; undone if it fails midway."""
    backup = read_backup(folder)
    if settings.database_url is None:
        _refuse_a_used_data_folder(settings)  # before the files: moving it aside moves them
    files = _files_to_put_back(backup, settings)
    missing = {name: path.absolute() for name, path in _relay_files(settings).items()
               if name not in backup.files and not path.exists()}
    if settings.database_url is None:
        where, upgraded = _restore_embedded(backup, files, settings, database)
    else:
        where = _where(settings)
        with database(settings) as dsn:
            if asyncio.run(_has_tables(dsn)):
                raise BackupError(
                    f"{where} already has tables: restore never writes over a database; "
                    "create an empty database owned by the role in DATABASE_URL, point "
                    "DATABASE_URL at it, and restore again")
            upgraded = _pg_restore(dsn, backup, undone=False)
        try:
            _put_back(files)
        except OSError as exc:
            raise BackupError(
                f"the database was restored, but {exc.filename} could not be written "
                f"({exc.strerror}): copy the backup's file there by hand (mode 0600)") from exc
    return Restored(backup, where, upgraded, missing)


def _relay_files(settings: Settings) -> dict[str, Path]:
    return {TOKEN_KEY: settings.token_key_path, TRUSTED_ORGS: settings.trusted_orgs_path}


def _files_to_put_back(backup: Backup, settings: Settings) -> dict[Path, tuple[bytes, int]]:
    """Where each of the backup's files goes, with its bytes and mode. One already there with
    the same bytes is left as it is; one that differs refuses the restore."""
    out: dict[Path, tuple[bytes, int]] = {}
    for name, target in _relay_files(settings).items():
        if name not in backup.files:
            continue
        data = backup.path(name).read_bytes()
        try:
            present = target.read_bytes()
        except FileNotFoundError:
            out[target] = (data, 0o600 if name == TOKEN_KEY else 0o644)
            continue
        if present != data:
            target = target.absolute()
            aside = shlex.quote(f"{target}.before-restore")
            raise BackupError(
                f"{target} is already there and differs from the backup's {name}: restore "
                f"never writes over it; move it aside (`mv {shlex.quote(str(target))} {aside}`) "
                "and restore again")
    return out


def _restore_embedded(backup: Backup, files: dict[Path, tuple[bytes, int]],
                      settings: Settings, database: Database
                      ) -> tuple[str, migrations.Upgraded | None]:
    """Restore into a new cluster in ``<data_dir>/restore-in-progress/pg``, stop it, put the
    files in place and rename it to ``<data_dir>/pg``; undo it all if any step fails."""
    data = settings.data_dir.absolute()
    cluster, staging = data / "pg", data / IN_PROGRESS
    data.mkdir(parents=True, exist_ok=True)
    staging.mkdir()
    placed: list[Path] = []
    try:
        with database(settings.replace(data_dir=staging), create=True) as dsn:
            upgraded = _pg_restore(dsn, backup, undone=True)
        if postmaster_pid(staging / "pg") is not None:
            raise BackupError(f"the new cluster in {staging / 'pg'} is still running (another "
                              "command holds it): nothing was restored; stop that command and "
                              "restore again")
        placed = _put_back(files)
        try:
            os.rename(staging / "pg", cluster)
        except OSError as exc:
            raise BackupError(f"{cluster} could not be made ({exc.strerror}: was a relay "
                              "started there meanwhile?): nothing was restored") from exc
    except BaseException:
        for path in placed:
            path.unlink(missing_ok=True)
        if postmaster_pid(staging / "pg") is None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rmdir()
    return f"the embedded Postgres in {cluster}", upgraded


def _refuse_a_used_data_folder(settings: Settings) -> None:
    data = settings.data_dir.absolute()
    cluster, staging = data / "pg", data / IN_PROGRESS
    if (cluster / "PG_VERSION").exists():
        aside = f"{data}.before-restore-{dt.datetime.now():%Y%m%d-%H%M}"
        raise BackupError(
            f"there is already a relay database in {cluster}: restore never writes over a "
            f"database; stop the relay, move its data folder aside (`mv "
            f"{shlex.quote(str(data))} {shlex.quote(aside)}`) and restore again")
    if staging.exists():
        raise BackupError(f"{staging} is left from a restore that did not finish: remove it "
                          f"(`rm -r {shlex.quote(str(staging))}`) and restore again")


def _pg_restore(dsn: str, backup: Backup, *, undone: bool) -> migrations.Upgraded | None:
    """The dump into an empty database, in one transaction, then this release's migrations if
    the dump's schema is older. ``undone``: a failure of the upgrade is undone by the caller.

    Into an *empty* database: the dump holds the whole schema at its revision, alembic_version
    included, so nothing is migrated first. (Migrating the empty database to the dump's
    revision and restoring with ``--clean --if-exists`` works too, tried on 2026-12-07, but
    drops and makes again every object the migrations made: work for nothing.)
    ``--no-owner``: the role of the connection owns what it restores, as after ``db upgrade``
    run as that role, whichever role owned the tables where the dump was taken (the embedded
    cluster's ``postgres``, or a hospital's owner role); the grants to the relay's own role
    come back with the dump, and a role they name that does not exist refuses the whole
    restore, naming it."""
    url, env = _libpq(dsn)
    done = subprocess.run([str(_tool("pg_restore")), "--single-transaction", "--no-owner",
                           "--dbname", url, str(backup.path(DUMP))],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                          check=False)
    if done.returncode != 0:
        raise BackupError("pg_restore stopped, and restored nothing (one transaction): "
                          f"{_first_error(_said(done.stderr, env), 'pg_restore')}")
    if backup.schema == migrations.head_revision():
        return None
    try:
        return migrations.upgrade_forward(dsn)
    except Exception as exc:
        after = ("nothing was restored" if undone else
                 f"the database holds the backup at schema {backup.schema}: run `lightbox-"
                 "server db upgrade` once the cause is fixed")
        raise BackupError(f"the restored database could not be upgraded from schema "
                          f"{backup.schema} to {migrations.head_revision()} ({exc}): {after}"
                          ) from exc


async def _revision(dsn: str) -> str | None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await migrations.current_revision(conn)
    finally:
        await conn.close()


async def _has_tables(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return bool(await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema'))"))
    finally:
        await conn.close()


def _put_back(files: dict[Path, tuple[bytes, int]]) -> list[Path]:
    """Write each file where it goes, never over one that appeared meanwhile (a link from a
    private temporary file fails if the name exists); the paths written."""
    placed: list[Path] = []
    try:
        for target, (data, mode) in files.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.restoring")
            _write_new(tmp, data, mode)
            try:
                os.link(tmp, target)
            finally:
                tmp.unlink()
            placed.append(target)
    except BaseException:
        for path in placed:
            path.unlink(missing_ok=True)
        raise
    return placed


# --- shared -------------------------------------------------------------------------------


def _where(settings: Settings) -> str:
    if settings.database_url is not None:
        return "the database at DATABASE_URL"
    return f"the embedded Postgres in {(settings.data_dir / 'pg').absolute()}"


def _tool(name: str) -> Path:
    """One of the PostgreSQL programs that come with pgserver (found without importing it:
    its import warns when XDG_RUNTIME_DIR is unset)."""
    spec = importlib.util.find_spec("pgserver")
    path = (Path(spec.origin).parent / "pginstall" / "bin" / name
            if spec is not None and spec.origin is not None else None)
    if path is None or not path.exists():
        raise BackupError(f"{name}, which comes with the relay's pgserver package, is not "
                          "there: install the relay again")
    return path


def _libpq(dsn: str) -> tuple[str, dict[str, str]]:
    """The connection URL for libpq without its password, and an environment that gives the
    password (``PGPASSWORD``)."""
    parts = urlsplit(dsn)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    url = urlunsplit(("postgresql", f"{user}@{hostport}" if at else hostport, parts.path,
                      parts.query, ""))
    env = dict(os.environ)
    env.pop("PGPASSWORD", None)
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
    return url, env


def _said(stderr: str | bytes, env: Mapping[str, str]) -> str:
    """A tool's stderr as text, with the password masked should it ever appear there."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    password = env.get("PGPASSWORD")
    return text.replace(password, "**********") if password else text


def _first_error(said: str, tool: str) -> str:
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line] or lines or ["no reason given"]
    return errors[0].removeprefix(f"{tool}: ").removeprefix("error: ")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """A new file with exactly ``mode`` (not the umask's), flushed to the disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, mode)
        f.write(data)
        f.flush()
        os.fsync(fd)


def _fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
