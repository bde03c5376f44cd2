"""nbgrader's settings for an instructor's server: the instructor image installs this file as
/usr/local/etc/jupyter/nbgrader_config.py (read after /etc/jupyter/nbgrader_config.py, the class's).

The course folder is ~/vislib on the instructor's own volume: a copy of the repository's assignments/
(source with solutions and hidden tests, the gradebook, submissions, feedback), made on the first start
(config.yaml's postStart). Its own nbgrader_config.py holds the course's settings (vislib's trusted
grading, the sqlite gradebook); loading it here gives formgrader the same settings as `nbgrader` run in
a terminal from ~/vislib."""

import os

c = get_config()  # noqa: F821 (traitlets provides it)

course_config = os.path.join(os.path.expanduser("~"), "vislib", "nbgrader_config.py")
if os.path.isfile(course_config):
    load_subconfig(course_config)  # noqa: F821 (traitlets provides it)

# Every learner's server runs as the same uid (1000, jovyan) on the shared exchange volume, so the owner
# of a submission cannot tell learners apart: nbgrader's check would warn about every submission.
# What the shared uid allows and what it does not: hub/k8s/README.md.
c.ExchangeCollect.check_owner = False
