"""The TLS rows of benchmarks/net.py: TLS echo over the protocol and streams APIs.

Every server gets the same `ssl.SSLContext` settings (TLS 1.3 only, a P-256 certificate
made for the run) and the load generator (net_load_tls.c, OpenSSL) offers one cipher suite
only, TLS_AES_128_GCM_SHA256 with X25519, so every loop does the same cryptographic work
per message and the rows compare what the loops add around it. Handshakes happen before
the measured window. The echo servers are net_server.py's protocol and streams servers with
`ssl=` (`tls-protocol`, `tls-streams`); rloop has no TLS (its cells are n/a).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOAD_C = HERE / "net_load_tls.c"
APIS = [("tls-protocol", "TLS Protocol"), ("tls-streams", "TLS streams")]


def server_context() -> ssl.SSLContext:
    """The servers' context: TLS 1.3 only, a fresh self-signed P-256 certificate."""
    with tempfile.TemporaryDirectory() as d:
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=localhost",
             "-keyout", key, "-out", cert],
            check=True, capture_output=True,
        )  # fmt: skip
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cert, key)
    return ctx


def build_client(out_dir: Path) -> list[str] | str:
    """Compile net_load_tls.c against OpenSSL (cached by the source's hash)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return "no C compiler (cc/gcc) on PATH"
    src = LOAD_C.read_bytes()
    exe = out_dir / ".bin" / f"net_load_tls-{hashlib.sha256(src).hexdigest()[:12]}"
    if not exe.exists():
        exe.parent.mkdir(parents=True, exist_ok=True)
        tmp = exe.with_suffix(".tmp")
        p = subprocess.run(
            [cc, "-O2", "-o", str(tmp), str(LOAD_C), "-lssl", "-lcrypto"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if p.returncode != 0:
            lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
            return f"{cc} failed (OpenSSL headers: libssl-dev): {lines[-1] if lines else ''}"
        tmp.rename(exe)
    return [str(exe)]


def client_cmd(api: str, args: argparse.Namespace) -> list[str]:
    """The load generator for `api`: net.py's own, or the TLS one for the TLS rows."""
    if not api.startswith("tls-"):
        return list(args.client_cmd)
    cmd = getattr(args, "tls_client_cmd", None)
    if cmd is None:
        cmd = args.tls_client_cmd = build_client(Path(args.out))
    if isinstance(cmd, str):
        raise SystemExit(f"cannot build the TLS load generator: {cmd}")
    return cmd
