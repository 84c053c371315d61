#!/usr/bin/env python3
"""Regenerate crates/outrider/link/symbol-order.txt: the functions a running sidecar executes.

Why: the kernel maps a whole 64 KiB window of the executable around every code page a process
touches, and with functions laid out in the compiler's order the code that start-up and the
request path run is scattered over most of .text. Listing the executed functions for the
linker (lld --symbol-ordering-file, wired in crates/outrider/build.rs) packs them together at
the front of .text, so fewer pages are resident and the hot path shares fewer i-TLB entries.

How: run `outrider run` under callgrind (--demangle=no, so that names are the linker's) on one
mesh that has every common path: HTTP/1.1 through a routed service with a retry policy and a
timeout, h2c and gRPC upstreams, an ingress TCP listener, and admin scrapes. Traffic comes from
curl and, when installed, h2load. Functions are written hottest first (exclusive instructions,
summed over the run), so the per-request code sits together and start-up code follows it.

Usage (root not needed; valgrind, curl needed; about 2 minutes):
    cargo build --release -p outrider
    python3 benches/layout/profile.py [--binary target/release/outrider] [--requests 3000]
    cargo build --release -p outrider    # relinks with the new order
A stale list is harmless: names that no longer exist are skipped by the linker.
"""
from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "outrider" / "link" / "symbol-order.txt"
HOST_H1 = "h1.layout.local"
HOST_H2 = "h2.layout.local"
HOST_GRPC = "grpc.layout.local"
GRPC_MESSAGE = b"\x00\x00\x00\x00\x0a\x0a\x08outrider"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spec(up: int) -> str:
    """One node ("app") with an ingress TCP listener and three backends, one per protocol."""
    def node(name: str, proto: str) -> str:
        return (f"meshName: layout\nvirtualNodeName: {name}\nspec:\n  listeners:\n"
                f"    - portMapping: {{ port: {up}, protocol: {proto} }}\n"
                "  serviceDiscovery:\n    dns: { hostname: 127.0.0.1 }\n")

    def service_on_node(host: str, name: str) -> str:
        return (f"meshName: layout\nvirtualServiceName: {host}\nspec:\n  provider:\n"
                f"    virtualNode: {{ virtualNodeName: {name} }}\n")

    docs = [
        "meshName: layout\nspec:\n  egressFilter:\n    type: DROP_ALL\n",
        "meshName: layout\nvirtualNodeName: app\nspec:\n  listeners:\n"
        f"    - portMapping: {{ port: {up}, protocol: tcp }}\n  backends:\n"
        + "".join(f"    - virtualService: {{ virtualServiceName: {h} }}\n"
                  for h in (HOST_H1, HOST_H2, HOST_GRPC)),
        node("up-h1", "http"), node("up-h2", "http2"), node("up-grpc", "grpc"),
        "meshName: layout\nvirtualRouterName: router\nspec:\n  listeners:\n"
        "    - portMapping: { port: 8080, protocol: http }\n",
        f"meshName: layout\nvirtualServiceName: {HOST_H1}\nspec:\n  provider:\n"
        "    virtualRouter: { virtualRouterName: router }\n",
        "meshName: layout\nvirtualRouterName: router\nrouteName: all\nspec:\n  priority: 1\n"
        "  httpRoute:\n    match:\n      prefix: /\n    retryPolicy:\n      maxRetries: 2\n"
        "      perRetryTimeout: { unit: ms, value: 2000 }\n"
        "      httpRetryEvents: [server-error, gateway-error]\n"
        "      tcpRetryEvents: [connection-error]\n    timeout:\n"
        "      perRequest: { unit: s, value: 10 }\n      idle: { unit: s, value: 300 }\n"
        "    action:\n      weightedTargets:\n        - { virtualNode: up-h1, weight: 1 }\n",
        service_on_node(HOST_H2, "up-h2"),
        service_on_node(HOST_GRPC, "up-grpc"),
    ]
    return "---\n".join(docs)


def wait_http(port: int, host: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                            f"Host: {host}", f"http://127.0.0.1:{port}/"],
                           capture_output=True, text=True)
        if r.stdout == "200":
            return
        time.sleep(0.5)
    sys.exit("profile: the proxy under callgrind never answered 200")


def traffic(egress: int, ingress: int, admin: int, n: int, tmp: Path) -> None:
    h2load = shutil.which("h2load")
    curl = ["curl", "-s", "-o", "/dev/null", "--max-time", "10"]
    base = f"http://127.0.0.1:{egress}/"
    if h2load:
        grpc_body = tmp / "grpc.bin"
        grpc_body.write_bytes(GRPC_MESSAGE)
        runs = [
            ["--h1", "-n", str(n), "-c", "20", "-H", f":authority: {HOST_H1}", base],
            ["--h1", "-n", str(n // 4), "-c", "4", "-H", f":authority: {HOST_H2}", base],
            ["-n", str(n // 2), "-c", "10", "-H", f":authority: {HOST_H2}", base],
            ["-n", str(n // 4), "-c", "4", "-d", str(grpc_body), "-H", f":authority: {HOST_GRPC}",
             "-H", "content-type: application/grpc", "-H", "te: trailers",
             base + "bench.Echo/Call"],
            ["--h1", "-n", str(n // 4), "-c", "4", f"http://127.0.0.1:{ingress}/"],
        ]
        for argv in runs:
            r = subprocess.run([h2load, *argv], capture_output=True, text=True, timeout=300)
            done = re.search(r"^requests: .*", r.stdout, re.M)
            print(f"profile: h2load {' '.join(argv[:-1])}: {done.group(0) if done else r.stderr}",
                  file=sys.stderr)
    else:
        print("profile: h2load not found; curl only (fewer requests)", file=sys.stderr)
        for _ in range(min(n, 200)):
            subprocess.run([*curl, "-H", f"Host: {HOST_H1}", base])
        for _ in range(50):
            subprocess.run([*curl, "--http2-prior-knowledge", "-H", f"Host: {HOST_H2}", base])
            subprocess.run([*curl, f"http://127.0.0.1:{ingress}/"])
    subprocess.run([*curl, "-X", "POST", "-H", f"Host: {HOST_H1}", "-d", "x" * 5000, base])
    subprocess.run([*curl, "-H", f"Host: {HOST_H1}", base + "?large=1", "-H", "Expect: 100-continue"])
    for path in ("ready", "stats", "stats/prometheus", "clusters", "server_info"):
        subprocess.run([*curl, f"http://127.0.0.1:{admin}/{path}"])


def executed(callgrind_out: Path) -> dict[str, int]:
    """Exclusive instruction count per function name, from callgrind's output format.

    Names are compressed ("fn=(12) name" the first time, "fn=(12)" after); a "calls=" line is
    followed by one cost line that is the call's inclusive cost, which is not the caller's own.
    """
    names: dict[str, str] = {}
    cost: dict[str, int] = {}
    current: str | None = None
    skip_next = False
    for line in callgrind_out.read_text(errors="replace").splitlines():
        m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line)
        if m:
            if m.group(3):
                names[m.group(2)] = m.group(3)
            if m.group(1) == "fn":
                current = names[m.group(2)]
                cost.setdefault(current, 0)
            continue
        if line.startswith("calls="):
            skip_next = True
            continue
        if current is None or not line or not (line[0].isdigit() or line[0] in "+-*"):
            continue
        if skip_next:
            skip_next = False
            continue
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            cost[current] += int(parts[1])
    return cost


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "outrider"))
    ap.add_argument("--requests", type=int, default=3000)
    args = ap.parse_args()
    binary = Path(args.binary)
    for tool in ("valgrind", "curl", "nm"):
        if not shutil.which(tool):
            sys.exit(f"profile: {tool} is needed")
    with tempfile.TemporaryDirectory(prefix="outrider-layout-") as d:
        tmp = Path(d)
        up, egress, ingress, admin = (free_port() for _ in range(4))
        (tmp / "mesh.yaml").write_text(spec(up))
        upstream = subprocess.Popen([str(binary), "upstream", "--addr", f"127.0.0.1:{up}",
                                     "--workers", "1"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        out = tmp / "callgrind.out"
        proxy = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--demangle=no", "--dump-instr=no",
             f"--callgrind-out-file={out}", str(binary), "run", "--config",
             str(tmp / "mesh.yaml"), "--node", "app", "--workers", "1",
             "--egress-addr", f"127.0.0.1:{egress}", "--ingress-addr", f"127.0.0.1:{ingress}",
             "--admin-addr", f"127.0.0.1:{admin}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http(egress, HOST_H1, time.monotonic() + 120)
            traffic(egress, ingress, admin, args.requests, tmp)
        finally:
            proxy.send_signal(signal.SIGINT)
            try:
                proxy.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proxy.kill()
            upstream.kill()
        cost = executed(out)
    defined = set(subprocess.run(["nm", "--defined-only", "-j", str(binary)], capture_output=True,
                                 text=True, check=True).stdout.split())
    hot = sorted((n for n in cost if n in defined), key=lambda n: (-cost[n], n))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(n + "\n" for n in hot))
    print(f"profile: {len(hot)} functions ({len(cost)} executed, the rest in shared libraries)"
          f" -> {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
