#!/usr/bin/env python3
"""The course's JupyterHub on one machine: `make hub`, `make hub-stop` and the test's clean-up.

    hubctl.py install --venv .venv          build /opt/vislib-hub (the hub's and the servers' environments)
    hubctl.py start --roster hub/roster.csv accounts, folders and config for the roster, then JupyterHub
                                            in the foreground (Ctrl-C stops the hub, the proxy and every server)
    hubctl.py stop                          stop a hub started by `start` (and whatever its users left running)
    hubctl.py remove                        stop, then delete the accounts this hub created (with their homes),
                                            its group and its folder (the class's work: back it up first)

Run as root with Debian's python3: it uses the standard library only. Nothing here is imported by vislib.

Where things go (``--prefix``, default /opt/vislib-hub; ``--root``, default /srv/vislib):

    PREFIX/hub/      a virtual environment of Debian's python3.11 with jupyterhub (hub/requirements.txt)
    PREFIX/node/     configurable-http-proxy, `npm ci` from hub/package-lock.json
    PREFIX/server/   every single-user server's and kernel's environment: Debian's python3.11 with the course
                     environment's packages hard-linked in (copied where the file systems differ), vislib
                     installed from the checkout, jupyterhub-singleuser; readable by every account
    ROOT/state/      root only: JupyterHub's database, secrets, the generated passwords, pid files
    ROOT/etc/        Jupyter and nbgrader config per role (common, student, instructor)
    ROOT/exchange/   nbgrader's exchange (1777; the course's folder in it belongs to the instructors' group)
    ROOT/course/     the nbgrader course folder: source, release, gradebook, submissions, grades, integrity
                     report; mode 2770, group of the instructors only
"""

from __future__ import annotations

import argparse
import csv
import grp
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
COURSE_ID = "vislib"
PY = "python3.11"
USERNAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
ROLES = ("instructor", "student")
# nbgrader's lab plugins and server extensions, and which role gets each
LAB_PLUGINS = {"@jupyter/nbgrader:formgrader": "instructor", "@jupyter/nbgrader:course-list": "instructor",
               "@jupyter/nbgrader:create-assignment": "instructor", "@jupyter/nbgrader:assignment-list": "both",
               "@jupyter/nbgrader:validate-assignment": "both"}
SERVER_EXTENSIONS = {"nbgrader.server_extensions.formgrader": "instructor",
                     "nbgrader.server_extensions.course_list": "instructor",
                     "nbgrader.server_extensions.assignment_list": "both",
                     "nbgrader.server_extensions.validate_assignment": "both"}


def say(*parts) -> None:
    print("[hub]", *parts, flush=True)


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], check=True, **kwargs)


def need_root() -> None:
    if os.geteuid() != 0:
        sys.exit("make hub needs root: it creates one Unix account per person on the roster and starts each\n"
                 "person's server as that person (run it with sudo, or as root in a container). Nothing was done.")


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(path.parent)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


# --- install ------------------------------------------------------------------------------------

def site_packages(prefix: Path) -> Path:
    return prefix / "lib" / PY / "site-packages"


def make_venv(path: Path, with_pip: bool, python: str = f"/usr/bin/{PY}") -> None:
    command = [python, "-m", "venv", *([] if with_pip else ["--without-pip"]), path]
    if subprocess.run([str(c) for c in command]).returncode != 0:  # Debian keeps ensurepip in python3-venv
        run("apt-get", "install", "-y", "python3-venv")
        shutil.rmtree(path, ignore_errors=True)
        run(*command)


def install_hub(prefix: Path) -> None:
    venv, stamp = prefix / "hub", prefix / "hub" / ".vislib-stamp"
    want = digest(HERE / "requirements.txt")
    if stamp.exists() and stamp.read_text() == want:
        return
    say(f"the hub's environment: {venv} (jupyterhub from hub/requirements.txt)")
    shutil.rmtree(venv, ignore_errors=True)
    make_venv(venv, with_pip=True)
    run(venv / "bin/python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "-r", HERE / "requirements.txt")
    stamp.write_text(want)


def install_proxy(prefix: Path) -> None:
    node, stamp = prefix / "node", prefix / "node" / ".vislib-stamp"
    want = digest(HERE / "package.json", HERE / "package-lock.json")
    if stamp.exists() and stamp.read_text() == want:
        return
    if shutil.which("node") is None or shutil.which("npm") is None:
        run("apt-get", "install", "-y", "nodejs", "npm")
    say(f"the proxy: configurable-http-proxy in {node} (npm ci, hub/package-lock.json)")
    shutil.rmtree(node, ignore_errors=True)
    node.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(HERE / name, node / name)
    run("npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error", cwd=node)
    stamp.write_text(want)


def same_filesystem(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def console_scripts(server: Path) -> None:
    """bin/ scripts for the packages linked in from the course environment (theirs point at its python)."""
    code = r"""
import importlib.metadata as md, sys, os
bin_dir, python = sys.argv[1], sys.argv[2]
for dist in md.distributions():
    for ep in dist.entry_points:
        if ep.group != "console_scripts":
            continue
        path = os.path.join(bin_dir, ep.name)
        if os.path.exists(path):
            continue
        module, _, attr = ep.value.partition(":")
        call = attr.strip() or "main"
        with open(path, "w") as f:
            f.write(f"#!{python}\nimport sys\nfrom {module} import {call.split('.')[0]}\n"
                    f"sys.exit({call}())\n")
        os.chmod(path, 0o755)
"""
    run(server / "bin/python", "-c", code, server / "bin", server / "bin/python")


def install_vislib(server: Path) -> None:
    """vislib as an installed package (a wheel built from a copy of the checkout, no dependencies fetched)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "vislib-src"
        source.mkdir()
        for name in ("pyproject.toml", "README.md", "setup.py", "setup.cfg", "MANIFEST.in"):
            if (CHECKOUT / name).exists():
                shutil.copy(CHECKOUT / name, source / name)
        shutil.copytree(CHECKOUT / "vislib", source / "vislib", ignore=shutil.ignore_patterns("__pycache__"))
        run(server / "bin/python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
            "--no-build-isolation", "--no-index", source)  # ShapesNet's weights come with it (package data)


def runs_as_nobody(*command) -> bool:
    return subprocess.run(["runuser", "-u", "nobody", "--", *map(str, command)], cwd="/", stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def course_interpreter(prefix: Path, course_venv: Path) -> str:
    """The course environment's own interpreter, runnable by every account: the same Python that built its
    packages (another patch release can differ: Debian's 3.11.2 breaks the soupsieve that nbconvert's feedback
    uses). Where it lives under a private home (pyenv in /root), its standard library is linked into
    PREFIX/python and its executable copied there, its library search path made relative ($ORIGIN)."""
    info = subprocess.run([str(course_venv / "bin/python"), "-c", "import sys; print(sys.base_prefix)"],
                          check=True, capture_output=True, text=True, cwd="/").stdout.split()
    base = Path(info[0])
    executable = base / "bin" / PY
    if runs_as_nobody(executable, "-c", "import ssl, sqlite3"):
        return str(executable)
    target, stamp = prefix / "python", prefix / "python" / ".vislib-stamp"
    want = f"{base} {executable.stat().st_mtime_ns}"
    if stamp.exists() and stamp.read_text() == want:
        return str(target / "bin" / PY)
    say(f"the course's Python ({base}) is private to root: linked into {target}")
    shutil.rmtree(target, ignore_errors=True)
    (target / "bin").mkdir(parents=True)
    (target / "lib" / PY).mkdir(parents=True)
    link = "-al" if same_filesystem(base, prefix) else "-a"
    for entry in (base / "lib" / PY).iterdir():
        if entry.name != "site-packages":
            run("cp", link, entry, target / "lib" / PY / entry.name)
    (target / "lib" / PY / "site-packages").mkdir()
    for library in (base / "lib").glob("libpython*.so*"):
        run("cp", "-a", library, target / "lib" / library.name)
    binary = (base / "bin" / PY).read_bytes()
    old = str(base / "lib").encode() + b"\0"
    new = b"$ORIGIN/../lib"
    if old in binary and len(new) < len(old):  # the RUNPATH that points into the private home
        binary = binary.replace(old, new + b"\0" * (len(old) - len(new)), 1)
    (target / "bin" / PY).write_bytes(binary)
    (target / "bin" / PY).chmod(0o755)
    for name in ("python3", "python"):
        (target / "bin" / name).symlink_to(PY)
    run("chmod", "-R", "a+rX", target)
    if not runs_as_nobody(target / "bin" / PY, "-c", "import ssl, sqlite3"):
        sys.exit(f"{target / 'bin' / PY} does not run for other accounts")
    stamp.write_text(want)
    return str(target / "bin" / PY)


def server_files(prefix: Path) -> None:
    """The hub's own small files in the servers' environment (refreshed by every install)."""
    server = prefix / "server"
    python = server / "bin/python"
    kernel = server / "share/jupyter/kernels/vislib"
    kernel.mkdir(parents=True, exist_ok=True)
    # the course environment may register this kernel too (make setup, --sys-prefix): its kernel.json came in
    # as a hard link; a new file replaces it, so the course environment's own stays as it is
    (kernel / "kernel.json").unlink(missing_ok=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (vislib)", "language": "python", "metadata": {"debugger": True}}, indent=1))
    for name in ("vislib-singleuser", "vislib-grade"):
        target = server / "bin" / name
        target.unlink(missing_ok=True)
        target.write_text((HERE / name).read_text().replace("@PREFIX@", str(prefix)))
        target.chmod(0o755)
    (site_packages(server) / "vislib_hub.py").unlink(missing_ok=True)
    shutil.copy(HERE / "vislib_hub.py", site_packages(server) / "vislib_hub.py")
    # JupyterLab's defaults for everyone on the hub: no news or update checks (the class may be offline)
    overrides = server / "share/jupyter/lab/settings/overrides.json"
    values = json.loads(overrides.read_text()) if overrides.exists() else {}
    values.setdefault("@jupyterlab/apputils-extension:notification", {}).update(
        {"fetchNews": "false", "checkForUpdates": False})
    overrides.unlink(missing_ok=True)  # a new file, never a write through a hard link into the course environment
    write(overrides, json.dumps(values, indent=2))
    run(python, "-m", "compileall", "-q", site_packages(server) / "vislib", site_packages(server) / "vislib_hub.py")
    run("chmod", "-R", "a+rX", server / "bin", server / "share/jupyter", site_packages(server) / "__pycache__")


def install_server(prefix: Path, course_venv: Path) -> None:
    server, stamp = prefix / "server", prefix / "server" / ".vislib-stamp"
    course_venv = course_venv.resolve()
    installed = course_venv / ".installed"
    want = json.dumps({"venv": str(course_venv), "python": (course_venv / "pyvenv.cfg").read_text(),
                       "installed": (installed if installed.exists() else course_venv).stat().st_mtime_ns,
                       "hub": digest(HERE / "requirements.txt", CHECKOUT / "constraints.txt"),
                       "vislib": digest(CHECKOUT / "vislib", CHECKOUT / "pyproject.toml")})
    if stamp.exists() and stamp.read_text() == want:
        server_files(prefix)
        return
    source = site_packages(course_venv)
    if not (source / "jupyterlab").is_dir() or not (source / "nbgrader").is_dir():
        sys.exit(f"{course_venv} is not the course environment (no jupyterlab or nbgrader): run `make setup`")
    python = course_interpreter(prefix, course_venv)
    shutil.rmtree(server, ignore_errors=True)
    make_venv(server, with_pip=False, python=python)
    link = same_filesystem(course_venv, prefix)
    say(f"the servers' environment: {server}, the course environment's packages "
        f"{'hard-linked' if link else 'copied'} from {course_venv}")
    for part in (f"lib/{PY}/site-packages", "share", "etc"):
        if (course_venv / part).is_dir():
            (server / part).mkdir(parents=True, exist_ok=True)
            run("cp", "-a" + ("l" if link else ""), f"{course_venv / part}/.", server / part)
    # vislib comes from the checkout below, as a real install: drop the editable install's pointers
    for leftover in site_packages(server).glob("__editable__*vislib*"):
        leftover.unlink()
    for leftover in site_packages(server).glob("vislib-*.dist-info"):
        shutil.rmtree(leftover)
    python = server / "bin/python"
    run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "-c", CHECKOUT / "constraints.txt", "-c", HERE / "requirements.txt", "jupyterhub")
    install_vislib(server)
    console_scripts(server)
    server_files(prefix)
    run("chmod", "-R", "a+rX", server)
    # every account can run it: check as nobody
    run("runuser", "-u", "nobody", "--", python, "-c",
        "import torch, jupyterlab, nbgrader, jupyterhub, vislib_hub; from vislib.models import shapes_net; "
        "shapes_net()", cwd="/")
    stamp.write_text(want)


def install(args) -> None:
    need_root()
    prefix = Path(args.prefix)
    prefix.mkdir(parents=True, exist_ok=True)
    prefix.chmod(0o755)
    install_hub(prefix)
    install_proxy(prefix)
    install_server(prefix, Path(args.venv))
    (prefix / "etc").mkdir(exist_ok=True)
    shutil.copy(HERE / "jupyterhub_config.py", prefix / "etc/jupyterhub_config.py")
    run("chmod", "-R", "a+rX", prefix / "etc", prefix / "node", prefix / "hub")
    say(f"installed in {prefix}")


# --- roster and accounts ---------------------------------------------------------------------------

def read_roster(path: Path) -> list[dict]:
    people, seen = [], set()
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r and not r[0].lstrip().startswith("#")]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["username", "role"]:
        rows = rows[1:]
    for number, row in enumerate(rows, 1):
        if len(row) < 2:
            sys.exit(f"{path}, entry {number}: expected 'username,role,display name', got {row}")
        name, role = row[0].strip(), row[1].strip().lower()
        display = row[2].strip() if len(row) > 2 and row[2].strip() else name
        if not USERNAME.match(name):
            sys.exit(f"{path}: {name!r} is not a valid account name (lower-case letters, digits, _ and -, "
                     "starting with a letter, at most 32)")
        if role not in ROLES:
            sys.exit(f"{path}: {name}'s role is {role!r}; it must be instructor or student")
        if name in seen:
            sys.exit(f"{path}: {name} is listed twice")
        if re.search(r"[:,\n]", display):
            sys.exit(f"{path}: {name}'s display name may not hold ':' or ','")
        seen.add(name)
        people.append({"name": name, "role": role, "display": display})
    if not any(p["role"] == "instructor" for p in people):
        sys.exit(f"{path}: the roster needs at least one instructor")
    return people


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def load_json(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def save_json(path: Path, value) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.chmod(0o600)
    tmp.replace(path)


def make_accounts(people: list[dict], state: Path, group: str) -> None:
    created_path, passwords_path = state / "created.json", state / "passwords.csv"
    created = load_json(created_path, {"users": [], "groups": []})
    if not group_exists(group):
        created["groups"].append(group)
        save_json(created_path, created)  # recorded before it exists: a crash still gets it removed
        run("groupadd", group)
    passwords = {}
    if passwords_path.exists():
        with passwords_path.open() as f:
            passwords = {r["username"]: r for r in csv.DictReader(f)}
    for person in people:
        name = person["name"]
        if not user_exists(name):
            created["users"].append(name)
            save_json(created_path, created)
            run("useradd", "--create-home", "--shell", "/bin/bash", "--user-group", "--comment", person["display"],
                name)
            password = secrets.token_urlsafe(12)  # 96 random bits, handed out once by the instructor
            run("chpasswd", input=f"{name}:{password}\n".encode())
            passwords[name] = {"username": name, "role": person["role"], "display_name": person["display"],
                               "password": password}
            say(f"account {name} ({person['role']}) created")
        elif name not in created["users"]:
            say(f"account {name} exists already: used as it is, with its own password")
        home = Path(pwd.getpwnam(name).pw_dir)
        home.chmod(0o700)  # nobody else reads a learner's work
        member = name in grp.getgrnam(group).gr_mem
        if person["role"] == "instructor" and not member:
            run("usermod", "-a", "-G", group, name)
        elif person["role"] == "student" and member:
            run("gpasswd", "-d", name, group)
    with passwords_path.open("w", newline="") as f:
        passwords_path.chmod(0o600)
        writer = csv.DictWriter(f, fieldnames=["username", "role", "display_name", "password"])
        writer.writeheader()
        writer.writerows(passwords.values())


# --- folders and config -------------------------------------------------------------------------

def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def course_folder(root: Path, group: str, instructors: list[str]) -> None:
    gid = grp.getgrnam(group).gr_gid
    course = root / "course"
    if not (course / "source").is_dir():
        course.mkdir(exist_ok=True)
        shutil.copytree(CHECKOUT / "assignments" / "source", course / "source", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    # the course's own grading settings (vislib's trusted grading): always the checkout's
    shutil.copy(CHECKOUT / "assignments" / "nbgrader_config.py", course / "nbgrader_config.py")
    # an empty file is an empty SQLite database: made here, it is the group's (sqlite would make it 0644 & umask)
    (course / "gradebook.db").touch()
    for path in [course, *course.rglob("*")]:
        if path.is_symlink():
            continue
        os.chown(path, -1, gid)
        if path.is_dir():
            path.chmod(0o2770)  # instructors only; new files keep the group
        else:
            path.chmod((path.stat().st_mode | 0o660) & 0o770)
    os.chown(course, 0, gid)
    exchange = root / "exchange"
    exchange.mkdir(exist_ok=True)
    os.chown(exchange, 0, 0)
    exchange.chmod(0o1777)  # nbgrader's documented world-writable exchange, sticky: nobody renames another's
    mine = exchange / COURSE_ID  # made here, so no learner can claim the course's name before the first release
    mine.mkdir(exist_ok=True)
    os.chown(mine, pwd.getpwnam(instructors[0]).pw_uid, gid)
    mine.chmod(0o2775)
    for name in instructors:
        link = Path(pwd.getpwnam(name).pw_dir) / COURSE_ID
        if link.is_symlink() and os.readlink(link) != str(course):
            link.unlink()
        if not link.exists() and not link.is_symlink():
            link.symlink_to(course)
            os.lchown(link, pwd.getpwnam(name).pw_uid, pwd.getpwnam(name).pw_gid)


def role_config(root: Path, prefix: Path) -> None:
    """ROOT/etc/{common,student,instructor}: on each server's JUPYTER_CONFIG_PATH (its role's first)."""
    etc = root / "etc"
    common = f'''# nbgrader for every account of this hub (written by hub/hubctl.py)
c = get_config()
c.CourseDirectory.course_id = "{COURSE_ID}"
c.Exchange.root = "{root / 'exchange'}"
c.Exchange.path_includes_course = False
# submissions readable by the instructors' group only; a submission owned by another account than the
# one it names is not collected (hub/vislib_hub.py)
c.ExchangeFactory.submit = "vislib_hub.PrivateSubmit"
c.ExchangeFactory.collect = "vislib_hub.OwnerCheckedCollect"
'''
    instructor = f'''# nbgrader for instructors (written by hub/hubctl.py)
from pathlib import Path
c = get_config()
# the course's own settings: vislib's trusted grading (TrustedExecute, CheckedOverwriteCells, FeedbackExporter)
load_subconfig("{root / 'course' / 'nbgrader_config.py'}")
# the course folder, seen through ~/{COURSE_ID} (formgrader wants it inside the server's root folder)
c.CourseDirectory.root = str(Path.home() / "{COURSE_ID}")
c.CourseDirectory.groupshared = True  # several instructors share the course folder through their group
'''
    write(etc / "common/nbgrader_config.py", common)
    write(etc / "common/jupyter_server_config.py", """# every server of this hub (written by hub/hubctl.py)
c = get_config()
# terminals: an interactive shell, not a login shell, keeps the PATH the hub gives (the course's tools first)
c.ServerApp.terminado_settings = {"shell_command": ["/bin/bash", "-i"]}
""")
    write(etc / "instructor/nbgrader_config.py", instructor)
    write(etc / "student/nbgrader_config.py", "# learners: the common settings only\n")
    # What `jupyter labextension enable|disable --level=user` and `jupyter server extension enable|disable --user`
    # write, with JUPYTER_CONFIG_DIR set to the role's folder (written directly: those commands take seconds each).
    for role in ROLES:
        on = {name: who in (role, "both") for name, who in LAB_PLUGINS.items()}
        write(etc / role / "labconfig/page_config.json",
              json.dumps({"disabledExtensions": {name: not enabled for name, enabled in on.items()}}, indent=2))
        write(etc / role / "jupyter_server_config.d/vislib-hub-nbgrader.json", json.dumps(
            {"ServerApp": {"jpserver_extensions": {name: who in (role, "both")
                                                   for name, who in SERVER_EXTENSIONS.items()}}}, indent=2))
    run("chmod", "-R", "a+rX,go-w", etc)


def settings(args, people: list[dict], root: Path, prefix: Path) -> Path:
    state = root / "state"
    for name in ("cookie_secret", "proxy_token", "admin_token"):
        path = state / name
        if not path.exists():
            write(path, secrets.token_hex(32), 0o600)
    values = {
        "port": args.port, "hub_api_port": args.hub_api_port, "proxy_api_port": args.proxy_api_port,
        "state": str(state), "root": str(root), "prefix": str(prefix),
        "proxy": str(prefix / "node/node_modules/.bin/configurable-http-proxy"),
        "singleuser": str(prefix / "server/bin/vislib-singleuser"),
        "users": {p["name"]: p["role"] for p in people},
    }
    path = state / "settings.json"
    save_json(path, values)
    return path


def start(args) -> None:
    need_root()
    prefix, root = Path(args.prefix), Path(args.root)
    if not (prefix / "server/.vislib-stamp").exists():
        sys.exit(f"{prefix} is not installed: run `hubctl.py install` (make hub does)")
    people = read_roster(Path(args.roster))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    state = root / "state"
    state.mkdir(exist_ok=True)
    state.chmod(0o700)
    pid = read_pid(state / "jupyterhub.pid")
    if pid and alive(pid):
        sys.exit(f"a hub for {root} runs already (pid {pid}): `make hub-stop HUB_ROOT={root}` first")
    make_accounts(people, state, args.group)
    instructors = [p["name"] for p in people if p["role"] == "instructor"]
    course_folder(root, args.group, instructors)
    role_config(root, prefix)
    settings_path = settings(args, people, root, prefix)
    save_json(state / "roster.json", people)
    url = f"http://127.0.0.1:{args.port}"
    say(f"{len(instructors)} instructors, {len(people) - len(instructors)} learners; course folder {root / 'course'}")
    say(f"passwords (root only, hand each out once): {state / 'passwords.csv'}")
    say(f"JupyterHub at {url}  (Ctrl-C or `make hub-stop` stops it, with every server)")
    env = {"PATH": f"{prefix / 'hub/bin'}:{prefix / 'node/node_modules/.bin'}:/usr/local/bin:/usr/bin:/bin",
           "VISLIB_HUB_SETTINGS": str(settings_path), "LANG": os.environ.get("LANG", "C.UTF-8"), "HOME": "/root"}
    os.chdir(state)
    command = [str(prefix / "hub/bin/jupyterhub"), "-f", str(prefix / "etc/jupyterhub_config.py")]
    os.execve(command[0], command, env)


# --- stop and remove ----------------------------------------------------------------------------

def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def processes_of(uids: set[int]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("Uid:") and int(line.split()[1]) in uids:
                        found.append(int(entry.name))
            except (OSError, ValueError):
                pass
    return [pid for pid in found if alive(pid)]


def end(pids: list[int], grace: float) -> list[int]:
    """SIGTERM, then SIGKILL after ``grace`` seconds; the pids still alive after that."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        pids = [p for p in pids if alive(p)]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.2)
    return [p for p in pids if alive(p)]


def stop(args) -> None:
    need_root()
    root = Path(args.root)
    state = root / "state"
    hub = read_pid(state / "jupyterhub.pid")
    if hub and alive(hub) and "jupyterhub" in cmdline(hub):
        say(f"stopping the hub (pid {hub}); it stops the proxy and every server")
        end([hub], grace=60)
    proxy = read_pid(state / "proxy.pid")
    if proxy and alive(proxy) and "configurable-http-proxy" in cmdline(proxy):
        end([proxy], grace=10)
    people = load_json(state / "roster.json", [])
    uids = {pwd.getpwnam(p["name"]).pw_uid for p in people if user_exists(p["name"])}
    left = processes_of(uids)
    if left:
        say(f"ending {len(left)} processes the class's accounts left running")
        left = end(left, grace=10)
    for name in ("jupyterhub.pid", "proxy.pid"):
        (state / name).unlink(missing_ok=True)
    if left:
        sys.exit(f"processes still running: {left}")
    say("stopped")


def remove(args) -> None:
    need_root()
    root = Path(args.root)
    state = root / "state"
    if state.is_dir():
        stop(args)
    created = load_json(state / "created.json", {"users": [], "groups": []})
    for name in created["users"]:
        if user_exists(name):
            uid = pwd.getpwnam(name).pw_uid
            end(processes_of({uid}), grace=5)
            run("userdel", "--remove", name, stderr=subprocess.DEVNULL)
            say(f"account {name} removed, with its home")
    for group in created["groups"]:
        if group_exists(group):
            run("groupdel", group)
    if root.exists():
        shutil.rmtree(root)
    say(f"{root} removed")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", default="/opt/vislib-hub")
    parser.add_argument("--root", default="/srv/vislib")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("install")
    p.add_argument("--venv", default=str(CHECKOUT / ".venv"), help="the course environment (make setup's .venv)")
    p = commands.add_parser("start")
    p.add_argument("--roster", default=str(HERE / "roster.csv"))
    p.add_argument("--group", default="vislib-instructors", help="the Unix group of the course's instructors")
    p.add_argument("--port", type=int, default=8000, help="the hub's address is http://127.0.0.1:PORT")
    p.add_argument("--hub-api-port", type=int, default=8081)
    p.add_argument("--proxy-api-port", type=int, default=8001)
    commands.add_parser("stop")
    commands.add_parser("remove")
    args = parser.parse_args(argv)
    {"install": install, "start": start, "stop": stop, "remove": remove}[args.command](args)


if __name__ == "__main__":
    main()
