"""JupyterHub's configuration for the course (`make hub`): PAM accounts from the roster, one server per person
started as that person (LocalProcessSpawner), on 127.0.0.1. The values that change between hubs (ports, folders,
the roster's roles) come from the settings file that hub/hubctl.py writes (VISLIB_HUB_SETTINGS)."""

import json
import os
from pathlib import Path

c = get_config()  # noqa: F821 (JupyterHub provides it)
S = json.loads(Path(os.environ["VISLIB_HUB_SETTINGS"]).read_text())
state, root, prefix = Path(S["state"]), Path(S["root"]), Path(S["prefix"])
roles = S["users"]  # name -> "instructor" | "student"

# --- addresses: everything on the loopback interface -------------------------------------------------
c.JupyterHub.bind_url = f"http://127.0.0.1:{S['port']}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = S["hub_api_port"]
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{S['proxy_api_port']}"
c.ConfigurableHTTPProxy.command = [S["proxy"]]
c.ConfigurableHTTPProxy.auth_token = (state / "proxy_token").read_text().strip()
c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
c.ConfigurableHTTPProxy.should_start = True

# --- the hub's own files: root only -----------------------------------------------------------------
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "cookie_secret")
c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True  # stopping the hub stops every server (Ctrl-C, make hub-stop)
c.JupyterHub.cleanup_proxy = True

# --- who logs in: the roster's accounts, with their Unix passwords (PAM) ------------------------------
# For a real class, swap in OAuth (README, "Run a class on JupyterHub"): the accounts and roles stay.
c.JupyterHub.authenticator_class = "pam"
c.PAMAuthenticator.open_sessions = False
c.Authenticator.allowed_users = set(roles)
c.Authenticator.admin_users = set()  # nobody on the roster administers the hub; root does, with hubctl
c.Authenticator.delete_invalid_users = True

# --- each person's server, as that person ---------------------------------------------------------------
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [S["singleuser"]]
c.Spawner.default_url = "/lab"
c.Spawner.notebook_dir = "~"
c.Spawner.ip = "127.0.0.1"
c.Spawner.start_timeout = 300  # many servers starting at once on two cores are slow, not broken
c.Spawner.http_timeout = 300
c.Spawner.env_keep = ["LANG", "LC_ALL"]
server = prefix / "server"


def _config_path(spawner):
    """The role's config first (nbgrader's extensions on or off, the instructors' course folder), then the
    settings common to everyone (course id, exchange)."""
    role = roles.get(spawner.user.name, "student")
    return os.pathsep.join([str(root / "etc" / role), str(root / "etc" / "common")])


c.Spawner.environment = {
    "PATH": f"{server / 'bin'}:/usr/local/bin:/usr/bin:/bin",
    "JUPYTER_CONFIG_PATH": _config_path,
    "VISLIB_HUB_ROLE": lambda spawner: roles.get(spawner.user.name, "student"),
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
}

# --- the hub's API for root's tools (hubctl's tests, hub/capacity.py): a service token in a root-only file ------
c.JupyterHub.services = [{"name": "vislib-admin", "api_token": (state / "admin_token").read_text().strip()}]
c.JupyterHub.load_roles = [{
    "name": "vislib-admin",
    "services": ["vislib-admin"],
    "scopes": ["admin:users", "admin:servers", "tokens", "list:users", "read:users"],
}]
