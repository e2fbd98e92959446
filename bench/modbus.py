"""Modbus/TCP through the gateway: the protocol-aware tunnel beside the blind one and direct.

One pymodbus PLC (``gateway.demo.plc``, in its own process) on 127.0.0.1, one real
``conduit serve``, two real OpenSSH ``ssh -N -L`` forwardings as the vendor: one to asset
``plc`` (protocol ``modbus``, grant ``modbus-read``: every request decoded and judged) and
one to asset ``blind`` (the same PLC port as a plain ``tunnel:<port>``: bytes passed
unread). Measured in one run, rounds interleaved so drift hits all paths alike:

- Read Holding Registers (125 registers) request/response latency, p50 and p99, for the
  direct connection, the blind tunnel and the protocol-aware one; the target is
  p50(aware) <= 1.1 x p50(blind);
- requests per second with 8 pipelined requests in flight through the aware tunnel (the
  gateway passes them to the PLC one at a time, docs/decisions/0018); the same load is
  tried blind and direct, where pymodbus's server stalls on coalesced frames (reported as
  the answers that came before a 3 s silence);
- gateway CPU (process tree) per request on each tunnel.

``python -m bench.modbus [--requests N] [--rounds R]``; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyotp

from bench.ssh_relay_rig import ASKPASS, start_gateway, stop, tree_cpu_seconds, wait_listening
from gateway.config import Overrides, load_settings
from gateway.identity.accounts import create_user
from gateway.keys import load_keyring
from gateway.ot.modbus import FrameReader, encode_frame
from gateway.services import Services
from tests.sshd_target import free_port
from tests.support import clean_env, init_data_dir

PASSWORD = "Bench-Passphrase-Long-1"  # noqa: S105 - throwaway benchmark account
USER = "bench"
READ_125 = struct.pack(">BHH", 3, 0, 125)
ANSWER_BYTES = 7 + 2 + 250


async def populate(data: Path, plc_port: int) -> str:
    settings = load_settings(None, Overrides(data_dir=data), environ={})
    keys = load_keyring(settings)
    services = Services.build(settings, keys)
    secret = pyotp.random_base32()
    try:
        async with services.sessions() as db, db.begin():
            await create_user(
                db, username=USER, roles=["vendor"], now=services.clock(),
                master_key=keys.master_key, password=PASSWORD, totp_secret=secret,
                status="active", organisation="acme",
            )  # fmt: skip
        authz = services.authz
        await authz.add_asset("plc", "127.0.0.1", plc_port, "modbus", actor="bench")
        await authz.add_asset("blind", "127.0.0.1", 22, "ssh", actor="bench")
        for asset, action in (("plc", "modbus-read"), ("blind", f"tunnel:{plc_port}")):
            await authz.add_grant(
                subject_kind="user", subject=USER, object_kind="asset", obj=asset,
                action=action, actor="bench",
            )  # fmt: skip
    finally:
        await services.close()
    return secret


def forward(work: Path, ssh_port: int, asset: str, plc_port: int, code: str) -> tuple[
    subprocess.Popen[bytes], int
]:  # fmt: skip
    """``ssh -N -L`` as the vendor to ``asset``; returns it and its local port, listening."""
    local = free_port()
    askpass = work / "askpass.sh"
    askpass.write_text(ASKPASS)
    askpass.chmod(0o700)
    env = clean_env(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0",
                    BENCH_PASSWORD=PASSWORD, BENCH_CODE=code)  # fmt: skip
    log = work / f"ssh-{asset}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            ["ssh", "-N", "-p", str(ssh_port), "-o", "StrictHostKeyChecking=no",
             "-o", f"UserKnownHostsFile={work / 'known_hosts'}",
             "-o", "PreferredAuthentications=keyboard-interactive",
             "-o", "ExitOnForwardFailure=yes", "-c", "aes128-gcm@openssh.com",
             "-L", f"127.0.0.1:{local}:{asset}:{plc_port}", f"{USER}+{asset}@127.0.0.1"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip
    wait_listening(local, proc, log)
    return proc, local


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def round_trip(sock: socket.socket, tid: int) -> float:
    frame = encode_frame(tid & 0xFFFF, 1, READ_125)
    start = time.perf_counter()
    sock.sendall(frame)
    got = 0
    while got < ANSWER_BYTES:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed")
        got += len(chunk)
    return time.perf_counter() - start


def pipelined(port: int, total: int, depth: int = 8) -> tuple[int, float]:
    """(answers, seconds) for ``total`` requests kept ``depth`` in flight; stops after 3 s
    without an answer (a PLC that stalls on coalesced frames)."""
    sock = connect(port)
    sock.settimeout(3)
    reader, sent, answered = FrameReader(), 0, 0
    start = time.perf_counter()
    try:
        sock.sendall(b"".join(encode_frame(i, 1, READ_125) for i in range(depth)))
        sent = depth
        while answered < total:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            frames = reader.feed(chunk)
            answered += len(frames)
            more = min(len(frames), total - sent)
            if more > 0:
                sock.sendall(b"".join(encode_frame((sent + i) & 0xFFFF, 1, READ_125)
                                      for i in range(more)))  # fmt: skip
                sent += more
    finally:
        sock.close()
    return answered, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(requests: int, rounds: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-modbus-") as tmp:
        work = Path(tmp)
        plc_port = free_port()
        plc = subprocess.Popen(
            [sys.executable, "-m", "bench.modbus", "--plc", str(plc_port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=clean_env(),
        )  # fmt: skip
        procs = [plc]
        try:
            wait_listening(plc_port, plc, work / "none.log")
            data = work / "data"
            init_data_dir(data)
            secret = asyncio.run(populate(data, plc_port))
            gateway, _, ssh_port = start_gateway(data, work)
            procs.append(gateway)
            totp, now = pyotp.TOTP(secret), time.time()
            aware_ssh, aware_port = forward(work, ssh_port, "plc", plc_port, totp.at(now - 30))
            procs.append(aware_ssh)
            blind_ssh, blind_port = forward(work, ssh_port, "blind", plc_port, totp.at(now))
            procs.append(blind_ssh)
            ports = {"direct": plc_port, "blind": blind_port, "aware": aware_port}
            socks = {name: connect(port) for name, port in ports.items()}
            samples: dict[str, list[float]] = {name: [] for name in ports}
            cpu: dict[str, float] = {name: 0.0 for name in ports}
            for sock in socks.values():  # warm up every path
                for i in range(50):
                    round_trip(sock, i)
            per_round = max(1, requests // rounds)
            for r in range(rounds):
                for name, sock in socks.items():
                    before = tree_cpu_seconds(gateway.pid)
                    for i in range(per_round):
                        samples[name].append(round_trip(sock, r * per_round + i))
                    cpu[name] += tree_cpu_seconds(gateway.pid) - before
            for sock in socks.values():
                sock.close()
            piped = {}
            for name in ("aware", "blind", "direct"):
                answered, seconds = pipelined(ports[name], requests)
                piped[name] = (answered, seconds)
        finally:
            for proc in reversed(procs):
                stop(proc)
    us = {name: [v * 1e6 for v in values] for name, values in samples.items()}
    p50 = {name: statistics.median(values) for name, values in us.items()}
    p99 = {name: percentile(values, 0.99) for name, values in us.items()}
    n = {name: len(values) for name, values in us.items()}
    out: dict[str, object] = {"requests_per_path": n["aware"], "registers": 125}
    for name in ports:
        out[f"{name}_p50_us"] = round(p50[name], 1)
        out[f"{name}_p99_us"] = round(p99[name], 1)
    out["aware_to_blind_p50"] = round(p50["aware"] / p50["blind"], 3)
    out["aware_to_blind_p99"] = round(p99["aware"] / p99["blind"], 3)
    out["blind_to_direct_p50"] = round(p50["blind"] / p50["direct"], 3)
    out["target_p50_met"] = p50["aware"] <= 1.1 * p50["blind"]
    for name, (answered, seconds) in piped.items():
        out[f"pipelined8_{name}_answered"] = answered
        out[f"pipelined8_{name}_req_s"] = round(answered / seconds, 1) if seconds else 0.0
    for name in ("aware", "blind"):
        out[f"gateway_cpu_us_per_req_{name}"] = round(cpu[name] / n[name] * 1e6, 1)
    out["gateway_cpu_aware_to_blind"] = round(cpu["aware"] / max(cpu["blind"], 1e-9), 3)
    return out


async def serve_plc(port: int) -> None:
    from gateway.demo.plc import start_plc

    await start_plc("127.0.0.1", port)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per path (default 2000)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--plc", type=int, help=argparse.SUPPRESS)  # the PLC process itself
    args = parser.parse_args()
    if args.plc:
        asyncio.run(serve_plc(args.plc))
        return
    if not 100 <= args.requests <= 100_000 or not 1 <= args.rounds <= 20:
        parser.error("--requests 100..100000, --rounds 1..20")
    result = run(args.requests, args.rounds)
    for key, value in result.items():
        print(f"{key:32} {value}")
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
