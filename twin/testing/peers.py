"""Real peers on loopback for tests and benchmarks: free ports, a mosquitto broker, a daemon config file."""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = ROOT / "twin" / "defaults"
RECORDED = ROOT / "data" / "recorded" / "calendering_run_01.csv.gz"
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def mosquitto_binary() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and Path(cand).exists():
            return cand
    raise FileNotFoundError("mosquitto is not installed: the test command installs it (apt-get install mosquitto)")


class Mosquitto:
    """A real mosquitto on a free loopback port, with persistence so a restart keeps sessions."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # as root, mosquitto would drop to user 'mosquitto' and then could not write its
            # persistence file into the test's folder; stay the user that runs the tests
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            "max_inflight_messages 1000\n"
            "max_queued_messages 1000000\n"
            "max_queued_bytes 0\n"
            f"log_dest file {workdir}/mosquitto.log\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None


def write_config(tmp_path: Path, connectors: str = "", extra: str = "", tagmap: Path | None = None) -> Path:
    cfg = tmp_path / "twin.toml"
    cfg.write_text(
        f'line_id = "pilot-1"\n'
        f'tagmap = "{tagmap or DEFAULTS / "tagmap.toml"}"\n'
        f"{extra}\n"
        f'[store.embedded]\npath = "{tmp_path / "store.sqlite"}"\n'
        f"[api]\nport = {free_port()}\n"
        f"{connectors}\n"
    )
    return cfg
