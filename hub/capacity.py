"""How many learners one machine holds: start N learner servers at once on the course's hub, run the saliency
assignment's setup cell and one check in each (all at the same time), and measure.

    sudo .venv/bin/python hub/capacity.py --learners 8 [--learners 12 ...]

For each N: a hub of its own (hub/hubctl.py, folder /srv/vislib-capacity, accounts cap-l01..., removed at the
end, also on failure), then

- spawn time: from the request to the server being ready, all N requested at once (median, max);
- setup and check latency: the setup cell (vislib, ShapesNet, 32 shapes) and `checks.saliency_map` on a
  correct `saliency_map`, run in every learner's kernel at once (median, max);
- memory per learner: RSS and PSS (shared pages divided among their users) of the learner's server and kernel,
  summed over that account's processes, after the check; and how much the machine's available memory fell.

Not part of `make test`: it takes minutes and its numbers depend on the machine. Results: a Markdown table on
stdout and build/hub/capacity.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pwd
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from hubclient import Hub, request  # noqa: E402

CHECKOUT = HERE.parent
ROOT = Path("/srv/vislib-capacity")
HUBCTL = ["/usr/bin/python3", str(HERE / "hubctl.py"), "--root", str(ROOT)]
SOLUTION = """
def saliency_map(model, x, target):
    x = x.detach().clone().requires_grad_(True)
    scores = model(x).gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(scores, x)
    return grad.abs().amax(dim=1)
"""


def setup_cell() -> str:
    notebook = json.loads((CHECKOUT / "assignments/release/saliency/saliency.ipynb").read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    source = code[0]["source"]
    return source if isinstance(source, str) else "".join(source)


def available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def memory_of(uid: int) -> tuple[float, float, int]:
    """(RSS MiB, PSS MiB, processes) summed over the processes of ``uid``."""
    rss = pss = count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            if int(status.split("Uid:")[1].split()[0]) != uid:
                continue
            for line in (entry / "smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
            count += 1
        except (OSError, IndexError, ValueError):
            continue
    return rss / 1024, pss / 1024, count


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(n: int, venv: str) -> dict:
    learners = [f"cap-l{i:02d}" for i in range(1, n + 1)]
    subprocess.run([*HUBCTL, "remove"], check=True, stdout=subprocess.DEVNULL)
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as roster:
        roster.write("username,role,display name\ncap-teach,instructor,Capacity Instructor\n")
        roster.writelines(f"{name},student,{name}\n" for name in learners)
    roster_path = Path(roster.name)
    roster_path.chmod(0o644)
    ports = [free_port() for _ in range(3)]
    log = open(CHECKOUT / "build/hub" / f"capacity-{n}.log", "w")
    subprocess.run(["/usr/bin/python3", str(HERE / "hubctl.py"), "install", "--venv", venv], check=True, stdout=log)
    hub_process = subprocess.Popen(
        [*HUBCTL, "start", "--roster", str(roster_path), "--group", "cap-instr", "--port", str(ports[0]),
         "--hub-api-port", str(ports[1]), "--proxy-api-port", str(ports[2])],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports[0]}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if request(f"{url}/hub/health", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if hub_process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the hub did not start; see " + log.name)
            time.sleep(1)
        hub = Hub(url, ROOT)
        for name in learners:
            hub.token(name)
        time.sleep(5)
        baseline = available_kib()

        def spawn(name):
            start = time.monotonic()
            hub.start_server(name)
            hub.wait_ready(name, seconds=900)
            return time.monotonic() - start

        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            spawn_s = list(pool.map(spawn, learners))
        code = setup_cell()

        def work(name):
            start = time.monotonic()
            printed, error, kernel = hub.run(name, code, timeout=900)
            assert error is None, printed
            setup = time.monotonic() - start
            start = time.monotonic()
            printed, error, _ = hub.run(name, SOLUTION + "\nchecks.saliency_map(saliency_map)\n", timeout=900,
                                        keep=kernel)
            assert error is None and "saliency_map: correct." in printed, printed
            return setup, time.monotonic() - start

        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            results = list(pool.map(work, learners))
        memory = [memory_of(pwd.getpwnam(name).pw_uid) for name in learners]
        used_mib = (baseline - available_kib()) / 1024
        setup_s, check_s = [r[0] for r in results], [r[1] for r in results]
        return {
            "learners": n, "cores": os.cpu_count(),
            "spawn_s": {"median": statistics.median(spawn_s), "max": max(spawn_s)},
            "setup_s": {"median": statistics.median(setup_s), "max": max(setup_s)},
            "check_s": {"median": statistics.median(check_s), "max": max(check_s)},
            "rss_mib_per_learner": statistics.median(m[0] for m in memory),
            "pss_mib_per_learner": statistics.median(m[1] for m in memory),
            "processes_per_learner": statistics.median(m[2] for m in memory),
            "machine_mib_used": used_mib, "machine_mib_per_learner": used_mib / n,
        }
    finally:
        subprocess.run([*HUBCTL, "stop"], stdout=log, stderr=subprocess.STDOUT)
        if hub_process.poll() is None:
            hub_process.kill()
        subprocess.run([*HUBCTL, "remove"], stdout=log, stderr=subprocess.STDOUT)
        roster_path.unlink(missing_ok=True)
        log.close()


def table(rows: list[dict]) -> str:
    lines = ["| learners at once | spawn s (median / max) | setup cell s (median / max) | check s (median / max) "
             "| RSS MiB per learner | PSS MiB per learner | machine MiB per learner |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['learners']} | {r['spawn_s']['median']:.1f} / {r['spawn_s']['max']:.1f} "
                     f"| {r['setup_s']['median']:.1f} / {r['setup_s']['max']:.1f} "
                     f"| {r['check_s']['median']:.1f} / {r['check_s']['max']:.1f} "
                     f"| {r['rss_mib_per_learner']:.0f} | {r['pss_mib_per_learner']:.0f} "
                     f"| {r['machine_mib_per_learner']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", type=int, action="append", help="N learners at once (repeatable; default 8)")
    parser.add_argument("--venv", default=str(CHECKOUT / ".venv"), help="the course environment")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("capacity.py needs root: it runs a hub with one Unix account per learner")
    (CHECKOUT / "build/hub").mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.learners or [8]:
        rows.append(measure(n, args.venv))
        print(json.dumps(rows[-1]), flush=True)
    (CHECKOUT / "build/hub/capacity.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
