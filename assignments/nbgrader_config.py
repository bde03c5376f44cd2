"""nbgrader's settings for the course's assignments: this folder is the course directory, the
gradebook is a local sqlite file, and nothing needs a server or the network."""

from pathlib import Path

c = get_config()  # noqa: F821 (nbgrader provides it)

root = Path(__file__).resolve().parent
c.CourseDirectory.root = str(root)
c.CourseDirectory.course_id = "vislib"
c.CourseDirectory.db_url = f"sqlite:///{root / 'gradebook.db'}"
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
c.ExecutePreprocessor.timeout = 120
