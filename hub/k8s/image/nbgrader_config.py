"""nbgrader's settings for every server of the class (learners and instructors): the image installs this
file as /etc/jupyter/nbgrader_config.py.

One course, `vislib`, and nbgrader's own filesystem exchange on the ReadWriteMany volume that config.yaml
mounts at /srv/nbgrader/exchange in every server (exchange.yaml creates it and sets it up as nbgrader
documents: the exchange root writable by everyone, the course's folder the instructor's)."""

import os

c = get_config()  # noqa: F821 (traitlets provides it)

c.CourseDirectory.course_id = "vislib"
c.Exchange.root = "/srv/nbgrader/exchange"
# nbgrader's JupyterHub guide recommends a log file; each person's lands in their own home.
c.NbGrader.logfile = os.path.join(os.path.expanduser("~"), ".nbgrader.log")
