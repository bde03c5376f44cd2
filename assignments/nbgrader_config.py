"""nbgrader's settings for the course's assignments: this folder is the course directory, the
gradebook is a local sqlite file, and nothing needs a server or the network (feedback included).

Autograding is vislib's trusted grading (vislib/grading/autograde.py): test cells are graded
outside the learner's kernel, a hung or crashing cell is stopped and the rest still graded, and
what looks like tampering goes to integrity.csv for the instructor."""

from pathlib import Path

from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, ClearOutput, DeduplicateIds,
                                    IgnorePattern, LimitOutput, OverwriteKernelspec, SaveAutoGrades)

from vislib.grading.autograde import CheckedOverwriteCells, TrustedExecute
from vislib.grading.feedback import FeedbackExporter

c = get_config()  # noqa: F821 (nbgrader provides it)

root = Path(__file__).resolve().parent
c.CourseDirectory.root = str(root)
c.CourseDirectory.course_id = "vislib"
c.CourseDirectory.db_url = f"sqlite:///{root / 'gradebook.db'}"
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# nbgrader's own order, with vislib's two preprocessors in place of OverwriteCells and Execute.
c.Autograde.sanitize_preprocessors = [ClearOutput, DeduplicateIds, OverwriteKernelspec, CheckedOverwriteCells,
                                      CheckCellMetadata]
c.Autograde.autograde_preprocessors = [TrustedExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
                                       SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
c.TrustedExecute.timeout = 30  # seconds per cell and per call of a learner's function (honest ones: a few)
c.TrustedExecute.submission_timeout = 300  # seconds per notebook

# Feedback pages draw their formulas as MathML: no MathJax from a CDN, one self-contained file.
c.GenerateFeedback.exporter_class = FeedbackExporter
