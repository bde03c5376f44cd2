"""Grading a class: scores that a submission's code cannot raise, and a run that one bad
submission cannot stop.

- ``autograde``: nbgrader's preprocessors (configured in ``assignments/nbgrader_config.py``);
- ``runner`` and ``remote``: the process where a learner's functions run while the checks,
  here, decide; ``wire``: what crosses between them;
- ``kernel``: the confined kernel that runs a notebook for its feedback page;
- ``confine``: what a process running learner code may touch;
- ``integrity``: what in a learner's cells looks like reaching into the grader.
"""
