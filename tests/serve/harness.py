"""Starts and stops a real `llorch serve` for the tests and the load test.

The binary is $LLORCH_BIN (default target/release/llorch), the model $LLORCH_SERVE_MODEL
(default: SmolLM2-135M through scripts/fetch-model). The server listens on a free port
(--port 0); its address comes from its "listening on" line. Its stderr (one line per request)
is kept in `lines`.
"""

import os
import re
import signal
import subprocess
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def binary():
    return os.environ.get("LLORCH_BIN", os.path.join(ROOT, "target", "release", "llorch"))


def model_path():
    path = os.environ.get("LLORCH_SERVE_MODEL")
    if not path:
        path = subprocess.run(
            [os.path.join(ROOT, "scripts", "fetch-model"), "smollm2-135m"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        os.environ["LLORCH_SERVE_MODEL"] = path
    return path


class Server:
    def __init__(self, *args, start_timeout=120):
        cmd = [binary(), "serve", "-m", model_path(), "--port", "0", *args]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )
        self.lines = []
        self._eof = False
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        line = self.wait_for_line(r"listening on (http://\S+)", start_timeout)
        if line is None:
            self.kill()
            raise RuntimeError("llorch serve did not start:\n" + self.log())
        self.url = re.search(r"listening on (http://\S+)", line).group(1)

    def _read(self):
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for_line(self, pattern, timeout, start=0):
        """The first log line from index `start` on matching `pattern`, or None at timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if re.search(pattern, line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    return None
                self._cond.wait(min(left, 0.2))

    def log(self):
        with self._cond:
            return "\n".join(self.lines)

    def sigterm(self):
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout):
        return self.proc.wait(timeout=timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        """SIGTERM, then the exit status (killed after 60 s)."""
        if self.proc.poll() is None:
            self.sigterm()
            try:
                return self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
