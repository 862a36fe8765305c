"""A Spark standalone cluster on 127.0.0.1, started from the pyspark package.

For the cluster test, the rebuild benchmark and trying ``spark-submit`` on one
machine. The pip package has no start-master.sh, so the master and workers are
started with ``spark-class``, each in its own process group, and stopped by PID.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyspark

SPARK_HOME = Path(pyspark.__file__).parent  # the pip package is a Spark distribution too


def code_zip(root: Path, out_dir: Path) -> Path:
    """The checkout at ``root`` as a wheel renamed .zip (Spark puts only .zip, .egg and .jar py-files
    on sys.path), for executors with nothing installed."""
    _drop_build_folders(root)  # setuptools builds in the tree: an old build/lib would ship modules moved since
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out_dir), str(root)], check=True, cwd=out_dir)
    _drop_build_folders(root)
    return shutil.copyfile(next(out_dir.glob("deepcrate-*.whl")), out_dir / "deepcrate.zip")


def _drop_build_folders(root: Path) -> None:
    for folder in (root / "build" / "lib", *(root / "build").glob("bdist*")):
        shutil.rmtree(folder, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class StandaloneCluster:
    """A master and ``workers`` workers (``cores`` each) logging and working under ``work``.

    Raises
    ------
    RuntimeError
        When the workers have not registered after two minutes.
    """

    def __init__(self, work: Path, *, workers: int, cores: int = 1, memory: str = "3g") -> None:
        self.work, self.processes = work, []
        self.env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
                    "SPARK_LOG_DIR": str(work)}
        port = free_port()
        self.url = f"spark://127.0.0.1:{port}"
        self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                    "--port", str(port), "--webui-port", str(free_port()))
        for n in range(workers):
            self._start(f"worker{n}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                        "--cores", str(cores), "--memory", memory, "--webui-port", str(free_port()),
                        "--work-dir", str(work / f"worker{n}"), self.url)
        self._wait_for("Registering worker", count=workers, log=work / "master.log", timeout_s=120)

    def _start(self, name: str, main_class: str, *args: str) -> None:
        # the child keeps its own copy of the log's descriptor; ours closes once it is started
        with open(self.work / f"{name}.log", "w") as log:
            process = subprocess.Popen([str(SPARK_HOME / "bin" / "spark-class"), main_class, *args], env=self.env,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)

    def _wait_for(self, text: str, *, count: int, log: Path, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while log.read_text().count(text) < count:
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                self.stop()
                raise RuntimeError(f"the cluster did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
