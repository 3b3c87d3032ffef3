"""Load on the app: N concurrent gradio_client clients plus D that drop their stream mid-generation.

Starts ``anllm app`` in a child process on 127.0.0.1 (a free port; nothing else is contacted), waits until it
answers, measures the server's threads and RSS, runs the clients, waits for the server to go idle, measures again
and stops it. Every wait is bounded and the whole run ends by itself within ``--timeout`` seconds.

Reports completed / stopped at the time limit / queue full / errors / dropped, latency percentiles of the
completed requests (submit to last update) and the server's threads and RSS before and after each round (the
counts add up over rounds; a second round tells a leak, which grows again, from warm-up, which grows once).

    python bench/app_load.py --clients 20 --disconnects 10 --model default --max-new-tokens 16
    python bench/app_load.py --clients 40 --disconnects 10 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, wait

import httpx

HOST = "127.0.0.1"  # loopback only


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict[str, float]:
    """Threads and RSS (MB) of a process, from /proc."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                out["rss_mb"] = int(line.split()[1]) / 1024
    return out


def start_server(args, port: int, log) -> subprocess.Popen:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", GRADIO_ANALYTICS_ENABLED="False")
    cmd = [sys.executable, "-m", "anllm", "app", "--host", HOST, "--port", str(port), "--model", args.model]
    cmd += ["--queue-size", str(args.queue_size), "--max-request-s", str(args.max_request_s)]
    cmd += ["--max-sessions", str(args.max_sessions)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} (its log: {proc.args_log})")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not answer within {timeout_s:.0f} s")


def request_args(args, i: int) -> tuple:
    prompt = f"Request {i}. Say one short sentence about the sea."
    return (prompt, args.model, "none", True, args.max_new_tokens, 0.0, 1.0, 0, 1.0, 0)


def one_client(url: str, args, i: int, deadline: float) -> tuple[str, float, str]:
    """``(outcome, seconds, detail)``; outcome is completed | time_limit | queue_full | error."""
    from gradio_client import Client

    t0 = time.perf_counter()
    try:
        client = Client(url, verbose=False)
        try:
            job = client.submit(*request_args(args, i), api_name="/generate")
            out = job.result(timeout=max(1.0, deadline - time.time()))
        finally:
            client.close()
    except Exception as e:  # noqa: BLE001 - classified below
        kind = "queue_full" if "Queue is full" in str(e) else "error"
        return kind, time.perf_counter() - t0, f"{type(e).__name__}: {e}"[:200]
    status = out[6]
    if status.startswith("✅"):
        return "completed", time.perf_counter() - t0, ""
    return ("time_limit" if "time limit" in status else "error"), time.perf_counter() - t0, status[:200]


def one_dropper(url: str, args, i: int, fn_index: int, deadline: float) -> tuple[str, float, str]:
    """A browser tab closing mid-stream: join the queue, read two streamed updates, then drop the connection."""
    t0 = time.perf_counter()
    session = uuid.uuid4().hex
    try:
        with httpx.Client(base_url=url, timeout=max(1.0, deadline - time.time())) as http:
            body = {"data": list(request_args(args, i)), "fn_index": fn_index, "session_hash": session}
            if http.post("gradio_api/queue/join", json=body).status_code != 200:
                return "error", time.perf_counter() - t0, "join refused"
            updates = 0
            with http.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as stream:
                for line in stream.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    msg = json.loads(line[5:]).get("msg")
                    if msg == "queue_full":
                        return "queue_full", time.perf_counter() - t0, ""
                    if msg == "process_generating":
                        updates += 1
                        if updates == 2:
                            return "dropped", time.perf_counter() - t0, ""
                    if msg == "process_completed":
                        return "completed_before_drop", time.perf_counter() - t0, ""
    except httpx.HTTPError as e:
        return "error", time.perf_counter() - t0, f"{type(e).__name__}: {e}"[:200]
    return "error", time.perf_counter() - t0, "stream ended early"


def burst(url: str, args, fn_index: int, deadline: float) -> list[tuple[str, float, str]]:
    """One round: every client and dropper at once; results of those still running at the deadline are errors."""
    pool = ThreadPoolExecutor(args.clients + args.disconnects)
    futures = [pool.submit(one_client, url, args, i, deadline) for i in range(args.clients)]
    # the droppers arrive while the first clients are being served
    futures += [pool.submit(one_dropper, url, args, i, fn_index, deadline) for i in range(args.disconnects)]
    done, not_done = wait(futures, timeout=max(1.0, deadline - time.time()))
    pool.shutdown(wait=False, cancel_futures=True)  # a client stuck past --timeout is reported, not waited for
    return [f.result() for f in done] + [("error", float("nan"), "still running at --timeout")] * len(not_done)


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def run(args) -> dict:
    port = free_port()
    url = f"http://{HOST}:{port}/"
    t_start = time.time()
    deadline = t_start + args.timeout
    log = tempfile.NamedTemporaryFile("w", prefix="anllm-app-load-", suffix=".log", delete=False)
    proc = start_server(args, port, log)
    proc.args_log = log.name
    try:
        ready_s = wait_ready(url, proc, min(args.timeout, 300))
        config = httpx.get(url + "config", timeout=30).json()
        fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "generate")
        warm = one_client(url, args, -1, deadline)  # the model is loaded and one request has run
        if warm[0] != "completed":
            raise SystemExit(f"the warm-up request failed: {warm}")
        before = proc_status(proc.pid)
        results, wall_s, after = [], 0.0, []
        for _ in range(args.rounds):  # a second round tells a leak (grows again) from warm-up (grows once)
            t0 = time.perf_counter()
            results += burst(url, args, fn_index, deadline)
            wall_s += time.perf_counter() - t0
            idle = one_client(url, args, -2, deadline)  # served only once the queue has drained
            time.sleep(2.0)
            after.append(proc_status(proc.pid))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    outcomes = [r[0] for r in results]
    latencies = [r[1] for r in results if r[0] == "completed"]
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
        "model": args.model,
        "clients": args.clients,
        "rounds": args.rounds,
        "disconnects": args.disconnects,
        "max_new_tokens": args.max_new_tokens,
        "queue_size": args.queue_size,
        "max_request_s": args.max_request_s,
        "max_sessions": args.max_sessions,
        "server_ready_s": round(ready_s, 1),
        "wall_s": round(wall_s, 1),
        **{k: outcomes.count(k) for k in ("completed", "time_limit", "queue_full", "error", "dropped")},
        "completed_before_drop": outcomes.count("completed_before_drop"),
        "latency_s": {
            name: None if v is None else round(v, 2)
            for name, v in (
                ("p50", percentile(latencies, 0.5)),
                ("p90", percentile(latencies, 0.9)),
                ("max", max(latencies) if latencies else None),
                ("mean", statistics.fmean(latencies) if latencies else None),
            )
        },
        "threads_before": before["threads"],
        "threads_after": [a["threads"] for a in after],  # after each round
        "rss_mb_before": round(before["rss_mb"], 1),
        "rss_mb_after": [round(a["rss_mb"], 1) for a in after],
        "idle_request_after": idle[0],
        "errors_detail": sorted({r[2] for r in results if r[0] == "error"})[:5],
    }
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=20, help="clients that wait for their answer")
    p.add_argument("--disconnects", type=int, default=10, help="clients that drop their stream mid-generation")
    p.add_argument("--model", default="default", help="model the server preloads and every client asks for")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2, help="bursts one after the other (RSS is measured after each)")
    p.add_argument("--queue-size", type=int, default=24, help="the server's --queue-size")
    p.add_argument("--max-request-s", type=float, default=60.0, help="the server's --max-request-s")
    p.add_argument("--max-sessions", type=int, default=100, help="the server's --max-sessions")
    p.add_argument("--timeout", type=float, default=900.0, help="the whole run ends within this many seconds")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    args = p.parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:>22}: {v}")
    return 0 if report["error"] == 0 else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # ends now even if a client thread is still blocked past --timeout
