"""Docs that run: README/docs snippets, examples/ and the deploy/ command lines.

Every fenced ```python block of README.md and docs/*.md runs in its own
interpreter (timeout 60 s) in a temporary working directory.  A block right
after a ``<!-- fragment -->`` line is a deliberate fragment: it is only
compiled.  The deploy/ units and compose file are parsed, their command
lines started as written except for addresses (loopback, free ports, a
temporary directory), a call goes through them, and SIGTERM must end them
with status 0.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.clitools import Procs, free_port, gaterpc_cmd, procs, short_tmp, stop, wait_service  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FRAGMENT = "<!-- fragment -->"


def _blocks():
    out = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        heading = ""
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("#"):
                heading = line
            if line.strip() == "```python":
                start = i + 1
                j = start
                while j < len(lines) and lines[j].strip() != "```":
                    j += 1
                prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
                rel = path.relative_to(ROOT).as_posix()
                skip = None
                out.append(pytest.param("\n".join(lines[start:j]) + "\n", prev.strip() == FRAGMENT, skip,
                                        rel, id=f"{rel}:{start}"))
                i = j
            i += 1
    return out


@pytest.mark.parametrize("code, fragment, skip, rel", _blocks())
def test_doc_snippet(code, fragment, skip, rel, procs, short_tmp):
    if skip:
        pytest.skip(skip)
    if fragment:
        # fragments may use top-level await (they are excerpts of coroutines)
        compile(code, rel, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return
    compile(code, rel, "exec")
    p = procs.run([sys.executable, "-c", _local_addresses(code, short_tmp)], timeout=60)
    assert p.returncode == 0, f"stdout:\n{p.out}\nstderr:\n{p.err[-3000:]}"


def _local_addresses(code: str, tmp: str) -> str:
    """The snippet as written, except that fixed addresses become private to this run.

    ``ipc:///tmp/NAME`` moves into the test's temporary directory, and each
    port of a ``tcp://127.0.0.1:PORT`` address becomes a free port (every
    occurrence of that number), so that parallel runs never collide.
    """
    code = code.replace("ipc:///tmp/", f"ipc://{tmp}/")
    for port in sorted(set(re.findall(r"tcp://127\.0\.0\.1:(\d{4,5})\b", code))):
        code = re.sub(rf"\b{port}\b", str(free_port()), code)
    return code


def test_local_addresses_rewrites_fixed_ports_and_paths():
    code = 'Node(9101, x); connect("tcp://127.0.0.1:9101"); bind("ipc:///tmp/a-front"); n = 91010'
    out = _local_addresses(code, "/tmp/t1")
    assert "9101," not in out and ":9101" not in out and "ipc:///tmp/t1/a-front" in out
    port = re.search(r"tcp://127\.0\.0\.1:(\d+)", out).group(1)
    assert f"Node({port}, x)" in out and out.endswith("n = 91010")


def test_every_doc_has_been_looked_at():
    assert len(_blocks()) >= 5


# --------------------------------------------------------------------------- examples

def test_example_serve_in_process(procs, short_tmp):
    front = f"ipc://{short_tmp}/front"
    p = procs.start([sys.executable, str(ROOT / "examples" / "serve_in_process.py"), front],
                    cwd=str(ROOT / "examples"))
    wait_service(procs, front, "Calc")
    c = procs.run(gaterpc_cmd("call", front, "Calc.add", "2", "3"))
    assert (c.returncode, c.out) == (0, "5\n"), c.err
    rc, out, err = stop(p)
    assert rc == 0, err
    assert "stopped by SIGTERM" in out


# --------------------------------------------------------------------------- deploy/

def _unit_cmd(name):
    text = (ROOT / "deploy" / "systemd" / name).read_text()
    fields = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    argv = shlex.split(fields["ExecStart"])
    assert argv[0] == "/opt/gaterpc/venv/bin/gaterpc"
    return argv[1:], fields


def _local(args, mapping):
    out = []
    for a in args:
        for old, new in mapping.items():
            a = a.replace(old, new)
        out.append(a)
    return out


def test_systemd_units_run_as_written(procs, short_tmp):
    port, mport = free_port(), free_port()
    mapping = {"tcp://0.0.0.0:5555": f"tcp://127.0.0.1:{port}", "/run/gaterpc": short_tmp,
               "127.0.0.1:9464": f"127.0.0.1:{mport}"}
    broker_args, bfields = _unit_cmd("gaterpc-broker.service")
    assert broker_args[broker_args.index("--metrics") + 1] == "127.0.0.1:9464"  # loopback only
    worker_args, wfields = _unit_cmd("gaterpc-worker@.service")
    assert bfields["KillSignal"] == wfields["KillSignal"] == "SIGTERM"
    grace = float(worker_args[worker_args.index("--grace") + 1])
    assert float(wfields["TimeoutStopSec"]) > grace
    app = str(ROOT / "examples")  # WorkingDirectory=/opt/gaterpc/app holds examples/calc.py
    assert wfields["WorkingDirectory"] == "/opt/gaterpc/app"
    broker = procs.start(gaterpc_cmd(*_local(broker_args, mapping)), cwd=app)
    workers = [procs.start(gaterpc_cmd(*_local(worker_args, mapping)), cwd=app) for _ in range(2)]
    front = f"tcp://127.0.0.1:{port}"
    wait_service(procs, front, "Calc")
    c = procs.run(gaterpc_cmd("call", front, "Calc.add", "2", "3"))
    assert (c.returncode, c.out) == (0, "5\n"), c.err
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as resp:
        scraped = resp.read().decode()
    assert 'gaterpc_workers{id=' in scraped and 'service="Calc"' in scraped
    prom = (ROOT / "deploy" / "prometheus.yml").read_text()
    assert '"127.0.0.1:9464"' in prom
    for w in workers:
        rc, _, err = stop(w)
        assert rc == 0, err
    rc, _, err = stop(broker)
    assert rc == 0, err
    assert any(json.loads(line)["message"].startswith("broker serving") for line in err.splitlines())


def test_systemd_units_offer_sched_batch_commented_out():
    deploy = (ROOT / "docs" / "DEPLOY.md").read_text()
    for unit in sorted((ROOT / "deploy" / "systemd").glob("*.service")):
        text = unit.read_text()
        lines = text.splitlines()
        # offered, off by default (a latency-sensitive host keeps the default policy)
        assert "#CPUSchedulingPolicy=batch" in lines, unit.name
        assert "CPUSchedulingPolicy" not in _unit_cmd(unit.name)[1]
        # in the [Service] section, next to the command it applies to
        assert text.index("[Service]") < text.index("#CPUSchedulingPolicy=batch") < text.index("[Install]")
    assert "CPUSchedulingPolicy=batch" in deploy and "chrt -b 0" in deploy and "--sched batch" in deploy


def test_systemd_gate_unit_starts_and_stops(procs, short_tmp):
    args, _ = _unit_cmd("gaterpc-gate.service")
    assert "--multicast" not in args  # multicast stays off
    port, gport, peer = free_port(), free_port(), free_port()
    mapping = {"tcp://0.0.0.0:5555": f"tcp://127.0.0.1:{port}", "/run/gaterpc": short_tmp,
               "--gate-bind 0.0.0.0": "", "tcp://10.0.0.2:9101": f"tcp://127.0.0.1:{peer}"}
    args = _local(args, mapping)
    args[args.index("--gate") + 1] = str(gport)
    args[args.index("--gate-bind") + 1] = "127.0.0.1"
    gate = procs.start(gaterpc_cmd(*args), cwd=str(ROOT / "examples"))
    c = procs.run(gaterpc_cmd("info", f"tcp://127.0.0.1:{port}", "--json", "--timeout", "20"))
    assert c.returncode == 0, c.err
    rc, _, err = stop(gate)
    assert rc == 0, err


def _compose_commands():
    text = (ROOT / "deploy" / "docker-compose.yml").read_text()
    services, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^  ([\w-]+):\s*$", line)
        if m:
            current = m.group(1)
            continue
        m = re.match(r"^    command:\s*(\[.*\])\s*$", line)
        if m and current:
            services[current] = json.loads(m.group(1))
    return services, text


def test_compose_commands_run_as_written(procs, short_tmp):
    services, text = _compose_commands()
    assert set(services) == {"broker", "worker"}
    assert "stop_signal: SIGTERM" in text
    fport, bport, mport = free_port(), free_port(), free_port()
    mapping = {"tcp://0.0.0.0:5555": f"tcp://127.0.0.1:{fport}", "tcp://0.0.0.0:5556": f"tcp://127.0.0.1:{bport}",
               "tcp://broker:5556": f"tcp://127.0.0.1:{bport}", "0.0.0.0:9464": f"127.0.0.1:{mport}"}
    app = str(ROOT / "examples")  # the image's WORKDIR /app is examples/
    broker = procs.start(gaterpc_cmd(*_local(services["broker"], mapping)), cwd=app)
    worker = procs.start(gaterpc_cmd(*_local(services["worker"], mapping)), cwd=app)
    front = f"tcp://127.0.0.1:{fport}"
    wait_service(procs, front, "Calc")
    c = procs.run(gaterpc_cmd("call", front, "Calc.count", "3"))
    assert (c.returncode, c.out.split()) == (0, ["0", "1", "2"]), c.err
    assert stop(worker)[0] == 0
    assert stop(broker)[0] == 0


def test_readme_command_line_section_runs(short_tmp):
    import subprocess

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Command line"):]
    script = section[section.index("```sh\n") + 6:section.index("\n```", section.index("```sh\n"))]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    p = subprocess.Popen(["bash", "-e", "-c", script], cwd=ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:  # our own process group (the shell and the jobs it started)
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert p.returncode == 0, f"stdout:\n{out}\nstderr:\n{err[-3000:]}"
    lines = out.splitlines()
    assert lines[:5] == ["5", "0", "1", "2", '"ab"']
    assert "Calc" in json.loads(lines[5])["services"]
