"""An archive of the driver JVM's classes (Java's class-data sharing), so a reader's JVM starts sooner.

A one-shot ``deepcrate sql`` spends most of its time in a JVM that loads some 20,000 classes
and runs them once. The first one-shot query writes the classes it loaded into an archive
as its JVM exits (``-XX:ArchiveClassesAtExit``: a few seconds, once); later queries, and the
shell, map that archive instead of loading the classes again (``-XX:SharedArchiveFile``):
about 6 s sooner on 2 cores (docs/benchmarks.md). The archive (~170 MB) lives in the user's
cache folder, named after this Java and this Spark, so an upgrade of either makes a new
one (and removes the old); the JVM itself refuses an archive that does not match it and
then starts as usual.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SUFFIX = ".jsa"
QUIET = "-Xlog:cds*=off"
_WAIT_S = 600.0  # for the JVM to write the archive as it exits


def cache_folder() -> Path:
    """``$XDG_CACHE_HOME/deepcrate/jvm`` (``~/.cache/deepcrate/jvm`` by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "deepcrate" / "jvm"


@dataclass(frozen=True)
class ClassArchive:
    """The archive for this Java and this Spark: used when it is there, else made by this run."""

    path: Path

    @classmethod
    def for_this_jvm(cls, folder: Path | None = None) -> ClassArchive | None:
        """The archive the driver JVM would use, or None when no ``java`` is found."""
        java = _java()
        if java is None:
            return None
        import pyspark

        jars = sorted(os.path.basename(j) for j in glob.glob(os.path.join(os.path.dirname(pyspark.__file__), "jars", "*")))
        release = Path(java).resolve().parents[1] / "release"
        key = hashlib.sha256(repr((pyspark.__version__, str(Path(java).resolve()), jars,
                                   release.read_bytes() if release.is_file() else b"")).encode()).hexdigest()[:16]
        return cls((folder or cache_folder()) / f"spark-{pyspark.__version__}-{key}{SUFFIX}")

    @property
    def ready(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    @property
    def draft(self) -> Path:
        """Where this process's JVM writes the archive before it is renamed into place."""
        return self.path.with_name(f"{self.path.name}.{os.getpid()}.draft")

    def java_option(self, *, make: bool) -> str | None:
        """The JVM option that uses the archive, or (``make``) writes it at exit; None: neither."""
        # The JVM logs what it leaves out of an archive (and an archive it cannot map) on its
        # stdout, which is the answer's: quiet, it just loads those classes as usual. It checks
        # the archive's checksums before mapping it (~0.1 s), so a damaged one is never used.
        if self.ready:
            return f"-XX:SharedArchiveFile={self.path} -XX:+VerifySharedSpaces {QUIET}"
        if not make:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return f"-XX:ArchiveClassesAtExit={self.draft} {QUIET}"

    def finish(self, spark) -> None:
        """After the run that makes the archive: the JVM writes it as it exits, after this process
        (some seconds); a detached helper then renames it into place, so the command returns at
        once and no reader ever maps a half-written archive."""
        proc = getattr(spark.sparkContext._gateway, "proc", None)
        if proc is None:
            return
        subprocess.Popen([sys.executable, "-m", __name__, str(proc.pid), str(self.draft), str(self.path)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)

    def adopt(self, draft: Path, *, jvm_pid: int) -> bool:
        """Once the JVM ``jvm_pid`` has exited, rename its ``draft`` into place; whether it did."""
        deadline = time.monotonic() + _WAIT_S
        while _running(jvm_pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        try:
            if draft.stat().st_size == 0:
                return False
            os.replace(draft, self.path)
        except FileNotFoundError:  # the JVM wrote none (no room?), or another run dropped it
            return False
        self._drop_others()
        return True

    def _drop_others(self) -> None:
        """Archives of another Java or Spark, and drafts a killed run left: never used again."""
        for other in self.path.parent.iterdir():
            if other != self.path and other.name.startswith("spark-") and SUFFIX in other.name:
                other.unlink(missing_ok=True)


def _java() -> str | None:
    """The ``java`` that Spark's launcher runs: ``$JAVA_HOME/bin/java``, else the one on ``PATH``."""
    home = os.environ.get("JAVA_HOME")
    if home and os.path.isfile(os.path.join(home, "bin", "java")):
        return os.path.join(home, "bin", "java")
    return shutil.which("java")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":  # the detached helper of ClassArchive.finish: JVM_PID DRAFT ARCHIVE
    jvm, draft_path, archive_path = sys.argv[1:4]
    ClassArchive(Path(archive_path)).adopt(Path(draft_path), jvm_pid=int(jvm))
