"""The class past one machine, on paper (hub/k8s/): Zero to JupyterHub's config.yaml validated against the
chart's published values schema (tests/data/z2jh/, source and version in its README), and checked against
the course image's Dockerfile, the exchange's manifest and the image's nbgrader settings. Nothing here
starts a cluster or builds an image."""

import copy
import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from jsonschema import Draft7Validator
from traitlets.config import Config, PyFileConfigLoader

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "hub" / "k8s"
Z2JH = Path(__file__).resolve().parent / "data" / "z2jh"
EXCHANGE = "/srv/nbgrader/exchange"
CSP = "frame-ancestors 'none'"
SIZED = "# sized from the capacity measurement in README (make hub)"


def _yaml(path):
    return yaml.safe_load(path.read_text())


def _yaml_all(path):
    """The documents of a multi-document manifest, by kind."""
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text())}


def _config():
    return _yaml(K8S / "config.yaml")


def _source():
    """Tag, commit, appVersion and sha256 sums of the schema's copy, from its README."""
    text = (Z2JH / "README.md").read_text()
    return {
        "tag": re.search(r"^- tag: (\S+)", text, flags=re.M).group(1),
        "commit": re.search(r"^- commit: ([0-9a-f]{40})$", text, flags=re.M).group(1),
        "jupyterhub": re.search(r"JupyterHub (\d+\.\d+\.\d+)", text).group(1),
        "sha256": dict(re.findall(r"^\| (\S+) \|.*\| ([0-9a-f]{64}) \|$", text, flags=re.M)),
    }


def _coalesce(defaults, values):
    """Helm's merge of a user's values over the chart's: maps merge key by key, a null removes the key,
    anything else (lists included) replaces."""
    merged = copy.deepcopy(defaults)
    for key, value in values.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _coalesce(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _schema():
    return json.loads((Z2JH / "values.schema.json").read_text())


def _schema_errors(values):
    validator = Draft7Validator(_schema())
    merged = _coalesce(_yaml(Z2JH / "values.yaml"), values)
    return sorted(validator.iter_errors(merged), key=lambda e: list(e.absolute_path))


def _profile(config, slug):
    (profile,) = [p for p in config["singleuser"]["profileList"] if p["slug"] == slug]
    return profile


# --- the chart's schema ---------------------------------------------------------------------------------


def test_schema_copy_is_the_recorded_one():
    source = _source()
    assert source["tag"].startswith("4.") and source["commit"]
    for name in ("values.schema.json", "values.yaml"):
        assert hashlib.sha256((Z2JH / name).read_bytes()).hexdigest() == source["sha256"][name], name
    Draft7Validator.check_schema(_schema())
    assert not _schema_errors({}), "the chart's own defaults must pass its schema"


def test_config_is_valid_for_the_chart():
    errors = _schema_errors(_config())
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def _set(values, dotted, value):
    *parents, last = dotted.split(".")
    for key in parents:
        values = values.setdefault(key, {})
    values[last] = value


@pytest.mark.parametrize(("dotted", "value", "named"), [
    ("singleuser.profilelist", [], "profilelist"),                       # a misspelt key
    ("singleuser.storage.extraVolume", [], "extraVolume"),               # a misspelt key, deeper
    ("hub.config.kubeSpawner", {"uid": 1000}, "kubeSpawner"),            # not a class name
    ("singleuser.cpu.limit", "1", "cpu.limit"),                          # a string for a number
    ("singleuser.uid", 1000.5, "singleuser.uid"),                        # a float for an integer
    ("singleuser.image.tag", 0.1, "image.tag"),                          # a tag left unquoted: a number
    ("proxy.https.type", "acme", "https.type"),                          # not one of the choices
])
def test_schema_catches_a_wrong_key_or_type(dotted, value, named):
    config = _config()
    _set(config, dotted, value)
    errors = _schema_errors(config)
    assert errors, f"{dotted}={value!r} passed the schema"
    where = [".".join(map(str, e.absolute_path)) + " " + e.message for e in errors]
    assert any(named in w for w in where), where


# --- the image ------------------------------------------------------------------------------------------


def _dockerfile():
    """[(stage, instruction, arguments)] with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (K8S / "Dockerfile").read_text())
    stage, out = None, []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stage = re.search(r"\bAS (\S+)$", args, flags=re.I).group(1)
        out.append((stage, instruction, " ".join(args.split())))
    return out


def _runs(stage=None):
    return [a for s, i, a in _dockerfile() if i == "RUN" and (stage is None or s == stage)]


def _version():
    return re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)


def test_dockerfile_builds_from_constraints():
    instructions = _dockerfile()
    (base,) = [a for _, i, a in instructions if i == "FROM" and not a.startswith("base ")]
    assert re.match(r"python:3\.11[-.\w]* AS base$", base), base
    assert any(i == "COPY" and a.split()[0] == "constraints.txt" for _, i, a in instructions)
    installs = [run for run in _runs() if "pip install" in run]
    assert installs
    for run in installs:
        assert "-c constraints.txt" in run, run
        assert not re.search(r"(^|\s)(-e|--editable)\s", run), f"an editable install: {run}"
    # The course itself, as a wheel built from the sources (`pip install .`), with nbgrader and JupyterHub.
    (course,) = [run for run in installs if re.search(r"\s\.(\s|$)", run)]
    assert "nbgrader" in course and "jupyterhub==${JUPYTERHUB_VERSION}" in course
    assert "--index-url" not in course


def test_dockerfile_jupyterhub_is_the_charts():
    """The single-user server's JupyterHub is of the hub's minor release (the chart's), and constraints.txt's
    if it pins one (pip would refuse the build otherwise)."""
    version = re.search(r"^ARG JUPYTERHUB_VERSION=(\S+)$", (K8S / "Dockerfile").read_text(), flags=re.M).group(1)
    assert version.split(".")[:2] == _source()["jupyterhub"].split(".")[:2]
    pinned = re.search(r"^jupyterhub==(\S+)$", (ROOT / "constraints.txt").read_text(), flags=re.M | re.I)
    if pinned:
        assert pinned.group(1) == version


def test_dockerfile_course_works_installed_and_for_every_account():
    runs = _runs("base")
    removed = next(i for i, run in enumerate(runs) if "rm -rf /tmp/vislib-src" in run)
    assert any("shapes_net()" in run and "site-packages" in run for run in runs[removed + 1:]), \
        "load ShapesNet from the installed package, away from the sources"
    assert any(re.search(r"ipykernel install --sys-prefix --name vislib\b", run) for run in runs)
    assert 'ENTRYPOINT ["tini"' in (K8S / "Dockerfile").read_text()


def test_dockerfile_roles_get_their_extensions():
    learner, instructor = " ".join(_runs("learner")), " ".join(_runs("instructor"))
    for plugin in ("formgrader", "create-assignment", "course-list"):
        assert f"labextension disable --level=sys_prefix @jupyter/nbgrader:{plugin}" in learner
        assert f"@jupyter/nbgrader:{plugin}" in learner.split("labextension lock", 1)[1]
    for extension in ("formgrader", "course_list"):
        assert f"server extension disable --sys-prefix nbgrader.server_extensions.{extension}" in learner
    assert "assignment-list" not in learner and "assignment_list.*enabled" in learner
    assert "disable" not in instructor and "formgrader.*enabled" in instructor


def test_learner_image_holds_no_solutions():
    copies = {s: [a for s2, i, a in _dockerfile() if i == "COPY" and s2 == s] for s in ("base", "learner")}
    assert not any("assignments" in a for a in copies["base"] + copies["learner"])
    assert any(a.startswith("assignments ") for s, i, a in _dockerfile() if i == "COPY" and s == "instructor")
    assert _dockerfile()[-1][0] == "learner", "a build without --target gives the learner's image"
    ignore = (K8S / "Dockerfile.dockerignore").read_text().splitlines()
    assert {"*", "assignments/submitted/", "assignments/gradebook.db"} <= set(ignore)


def test_config_images_are_the_dockerfiles():
    """Convention: REGISTRY/vislib-<target>:<version>, <version> from pyproject.toml (or <version>-<suffix>)."""
    stages = {s for s, i, _ in _dockerfile() if i == "FROM"}
    config = _config()
    learner = config["singleuser"]["image"]
    name, instructor_tag = _profile(config, "instructor")["kubespawner_override"]["image"].rsplit(":", 1)
    job = _yaml_all(K8S / "exchange.yaml")["Job"]["spec"]["template"]["spec"]["containers"][0]["image"]
    for image, target in ((learner["name"], "learner"), (name, "instructor"), (job.rsplit(":", 1)[0], "learner")):
        assert target in stages and image.rsplit("/", 1)[-1] == f"vislib-{target}", image
    for tag in (learner["tag"], instructor_tag, job.rsplit(":", 1)[1]):
        assert tag == _version() or tag.startswith(_version() + "-"), tag


def test_users_are_the_images():
    dockerfile = (K8S / "Dockerfile").read_text()
    config = _config()
    assert config["singleuser"]["uid"] == 1000 and config["singleuser"]["fsGid"] == 100
    assert re.search(r"useradd --uid 1000 --gid 100 .*\bjovyan\b", dockerfile)
    instructor = _profile(config, "instructor")["kubespawner_override"]["uid"]
    assert instructor != 1000 and re.search(rf"useradd --uid {instructor} --gid 100 .*\binstructor\b", dockerfile)
    assert f"USER {instructor}" in dockerfile and "USER 1000" in dockerfile


# --- profiles, roles and resources ----------------------------------------------------------------------


def _roles(config):
    """Run hub.extraConfig's vislib-roles.py as the chart does, with the profiles it would have set."""
    c = Config()
    c.KubeSpawner.profile_list = copy.deepcopy(config["singleuser"]["profileList"])
    namespace = {"c": c}
    exec(compile(config["hub"]["extraConfig"]["vislib-roles.py"], "vislib-roles.py", "exec"), namespace)
    return namespace


@pytest.mark.parametrize(("groups", "slugs"), [
    (["vislib-learners"], ["learner"]),
    (["vislib-instructors"], ["instructor"]),
    (["vislib-learners", "vislib-instructors"], ["learner", "instructor"]),
    ([], []),
])
def test_each_role_sees_its_own_profile(groups, slugs):
    config = _config()
    profile_list = _roles(config)["c"].KubeSpawner.profile_list
    spawner = SimpleNamespace(user=SimpleNamespace(groups=[SimpleNamespace(name=g) for g in groups]))
    assert [p["slug"] for p in profile_list(spawner)] == slugs


def test_roles_are_the_identity_providers_groups():
    config = _config()
    oauth = config["hub"]["config"]["GenericOAuthenticator"]
    assert config["hub"]["config"]["JupyterHub"]["authenticator_class"] == "generic-oauth"
    assert oauth["manage_groups"] is True and oauth["auth_state_groups_key"]
    assert set(_roles(config)["VISLIB_PROFILE_GROUPS"].values()) == set(oauth["allowed_groups"])
    assert {p["slug"] for p in config["singleuser"]["profileList"]} == set(_roles(config)["VISLIB_PROFILE_GROUPS"])
    # The secret comes from a Kubernetes Secret, never from this file.
    assert not any("client_secret" in section for section in config["hub"]["config"].values())
    assert config["hub"]["extraEnv"]["OAUTH_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"]["name"]
    assert config["hub"]["config"]["KubeSpawner"]["disable_user_config"] is True


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(size):
    """JupyterHub's byte sizes: a number, or a number with K, M, G or T (powers of 1024)."""
    if isinstance(size, int | float):
        return size
    number, unit = re.fullmatch(r"([\d.]+)([KMGT])", size).groups()
    return float(number) * _UNITS[unit]


def test_resources_are_guaranteed_and_limited_per_role():
    config = _config()
    user = config["singleuser"]
    learner = {"cpu_guarantee": user["cpu"]["guarantee"], "cpu_limit": user["cpu"]["limit"],
               "mem_guarantee": user["memory"]["guarantee"], "mem_limit": user["memory"]["limit"]}
    instructor = {**learner, **_profile(config, "instructor")["kubespawner_override"]}
    for role in (learner, instructor):
        assert 0 < role["cpu_guarantee"] <= role["cpu_limit"]
        assert 0 < _bytes(role["mem_guarantee"]) <= _bytes(role["mem_limit"])
    assert instructor["cpu_limit"] >= learner["cpu_limit"]
    assert _bytes(instructor["mem_limit"]) >= _bytes(learner["mem_limit"])
    # Each figure carries the marker that the capacity measurement looks for, right above it.
    lines = (K8S / "config.yaml").read_text().splitlines()
    following = [next(x.strip() for x in lines[i + 1:] if not x.strip().startswith("#"))
                 for i, x in enumerate(lines) if x.strip() == SIZED]
    assert following == ["cpu:", "cpu_guarantee: " + str(instructor["cpu_guarantee"])]
    # torch's threads: one per CPU of the limit, not one per CPU of the node.
    assert user["extraEnv"]["OMP_NUM_THREADS"] == str(max(1, int(learner["cpu_limit"])))
    assert instructor["environment"]["OMP_NUM_THREADS"] == str(max(1, int(instructor["cpu_limit"])))


# --- nbgrader: exchange, course, Content-Security-Policy ---------------------------------------------------


def _nbgrader_config(name):
    return PyFileConfigLoader(name, path=str(K8S / "image")).load_config()


def test_exchange_is_a_shared_volume_set_up_as_nbgrader_documents():
    config = _config()
    storage = config["singleuser"]["storage"]
    (volume,) = [v for v in storage["extraVolumes"] if v["name"] == "nbgrader-exchange"]
    (mount,) = [m for m in storage["extraVolumeMounts"] if m["name"] == "nbgrader-exchange"]
    assert mount["mountPath"] == EXCHANGE and not mount.get("readOnly")
    manifests = _yaml_all(K8S / "exchange.yaml")
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert manifests["PersistentVolumeClaim"]["metadata"]["name"] == claim
    assert manifests["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    job = manifests["Job"]["spec"]["template"]["spec"]
    assert job["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
    assert job["containers"][0]["volumeMounts"][0]["mountPath"] == EXCHANGE
    script = job["containers"][0]["command"][-1]
    instructor = _profile(config, "instructor")["kubespawner_override"]["uid"]
    assert f"chmod 1777 {EXCHANGE}\n" in script
    assert f"chown {instructor}:100 {EXCHANGE}/vislib\n" in script and f"chmod 0755 {EXCHANGE}/vislib\n" in script
    # The image's nbgrader looks for the exchange where the volume is, for the course vislib.
    assert _nbgrader_config("nbgrader_config.py").Exchange.root == EXCHANGE
    assert _nbgrader_config("nbgrader_config.py").CourseDirectory.course_id == "vislib"


def test_instructor_nbgrader_reads_the_course_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _nbgrader_config("instructor_nbgrader_config.py").ExchangeCollect.check_owner is False
    course = tmp_path / "vislib"
    course.mkdir()
    (course / "nbgrader_config.py").write_text((ROOT / "assignments" / "nbgrader_config.py").read_text())
    loaded = _nbgrader_config("instructor_nbgrader_config.py")
    assert loaded.CourseDirectory.root == str(course)
    assert loaded.CourseDirectory.course_id == "vislib"
    assert loaded.Autograde.autograde_preprocessors, "the course's trusted grading"
    # ... which is where the instructor's first start puts it.
    command = _profile(_config(), "instructor")["kubespawner_override"]["lifecycle_hooks"]["postStart"]["exec"]
    assert 'cp -R /opt/vislib/course "$HOME/vislib"' in command["command"][-1]
    assert "COPY assignments /opt/vislib/course" in (K8S / "Dockerfile").read_text()


def test_single_user_csp_stays_frame_ancestors_none():
    files = _config()["singleuser"]["extraFiles"]
    (csp,) = [f for f in files.values() if "Content-Security-Policy" in str(f.get("data"))]
    assert csp["data"]["ServerApp"]["tornado_settings"]["headers"]["Content-Security-Policy"] == CSP
    # A config file that Jupyter Server reads whole: from jupyter_server_config.d/ it reads only which
    # extensions are enabled, and a header there would be ignored without a word.
    assert csp["mountPath"] in ("/usr/local/etc/jupyter/jupyter_server_config.json",
                                "/etc/jupyter/jupyter_server_config.json")
    assert "jupyter_server_config.json" not in (K8S / "Dockerfile").read_text(), "the image would lose its own"
    # Nothing under hub/k8s relaxes it (nbgrader's demo sets "frame-ancestors 'self'": not here).
    for path in K8S.rglob("*"):
        if path.is_file():
            for found in re.findall(r"frame-ancestors[^\"\n]*", path.read_text()):
                assert found == CSP or found.startswith(CSP + "`"), f"{path.name}: {found}"


def test_readme_pins_the_chart_and_says_it_is_not_run_here():
    readme = (K8S / "README.md").read_text()
    tag = _source()["tag"]
    commands = re.sub(r"\\\n\s*", " ", readme)  # continuation lines joined
    assert re.search(rf"^helm upgrade .*--install .*--version[ =]{re.escape(tag)}\b", commands, flags=re.M), \
        f"helm upgrade --install with the chart's version pinned to the schema's ({tag})"
    assert f"chart {tag}" in (K8S / "config.yaml").read_text()
    assert "not run here" in readme.lower()
    for target in ("learner", "instructor"):
        assert f"docker build -f hub/k8s/Dockerfile --target {target}" in readme
