"""A real PgBouncer in transaction mode in front of a PostgreSQL server, for tests and benchmarks.

Debian's `pgbouncer` (apt-get install pgbouncer), run from a temporary folder. The
request timeouts are set by PgBouncer on every server connection, since a client
cannot send session settings through a transaction pooler.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg


class PgBouncerMissing(RuntimeError):
    """Debian's pgbouncer is not installed."""


class PgBouncer:
    """Starts PgBouncer on a free 127.0.0.1 port; `stop()` ends it and removes its folder."""

    def __init__(
        self,
        *,
        server_host: str = "127.0.0.1",
        server_port: int = 5432,
        user: str = "root",
        pool_size: int = 4,
        max_server_connections: int = 40,
        max_client_connections: int = 5000,
    ) -> None:
        if shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists():
            raise PgBouncerMissing("pgbouncer is required: run `apt-get install -y pgbouncer` (as root)")
        self.dir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        self.user = user
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        (self.dir / "userlist.txt").write_text(f'"{user}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server_host} port={server_port} "
            "connect_query='SET statement_timeout = 5000; SET lock_timeout = 2000'\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir}/userlist.txt\npool_mode = transaction\n"
            f"max_client_conn = {max_client_connections}\ndefault_pool_size = {pool_size}\n"
            # idle server connections of other databases are closed to stay under it
            f"max_user_connections = {max_server_connections}\nserver_idle_timeout = 10\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {self.dir}/pgbouncer.log\npidfile = {self.dir}/pgbouncer.pid\n"
        )
        # -q: it logs to its logfile only (a pipe nobody reads would fill up and freeze it).
        command = [shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", "-q", str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            shutil.chown(self.dir, "postgres")
            command[1:1] = ["-u", "postgres"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                psycopg.connect(host="127.0.0.1", port=self.port, user=user, dbname="postgres").close()
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.dir / "pgbouncer.log"
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not start: {log.read_text() if log.exists() else ''}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
