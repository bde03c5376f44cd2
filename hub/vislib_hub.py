"""nbgrader's exchange for the course's hub (installed next to vislib in the servers' environment by
hub/hubctl.py and named in ROOT/etc/common/nbgrader_config.py).

nbgrader's own exchange leaves two doors open between learners on one machine:

- ``nbgrader submit --student SOMEONE_ELSE`` files a submission under another learner's name, and
  ``nbgrader collect`` only warns when a submission's owner is not the learner it names: the newest one is
  collected all the same. ``OwnerCheckedCollect`` collects a learner's newest submission *that the learner's
  own account made*; the others are refused (logged, and listed in the course folder's forged.csv).
- a submission is world-readable (0644 files, a 0777 folder), hidden only by its unguessable name.
  ``PrivateSubmit`` closes its folder to everyone but its author and the instructors' group (the inbound
  folder's group: nbgrader's inbound is set-group-ID, and the hub gives the course's exchange folder to
  that group).
"""

from __future__ import annotations

import csv
import datetime
import glob
import os
import pwd
from stat import S_IRWXG, S_IRWXU

from nbgrader.api import Gradebook, MissingEntry
from nbgrader.exchange.default.collect import ExchangeCollect, groupby
from nbgrader.exchange.default.submit import ExchangeSubmit


def owner(path: str) -> str:
    try:
        return pwd.getpwuid(os.stat(path).st_uid).pw_name
    except KeyError:
        return f"uid {os.stat(path).st_uid}"


class PrivateSubmit(ExchangeSubmit):
    def copy_files(self):
        super().copy_files()
        dest = os.path.join(self.inbound_path, self.assignment_filename)
        if os.stat(dest).st_gid != os.stat(self.inbound_path).st_gid:
            self.log.warning("%s is not in the group of %s: left as nbgrader makes it", dest, self.inbound_path)
            return
        # nbgrader leaves the folder 0777 and its files 0644; the folder alone now keeps the others out: it
        # belongs to the inbound folder's group (the instructors', inherited through its set-group-ID bit)
        os.chmod(dest, S_IRWXU | S_IRWXG)


class OwnerCheckedCollect(ExchangeCollect):
    def init_src(self):
        super().init_src()  # checks the course and the inbound folder, reads the due date
        pattern = os.path.join(self.inbound_path, f"{self.coursedir.student_id or '*'}+"
                                                  f"{self.coursedir.assignment_id}+*")
        records, forged = [], []
        for path in glob.glob(pattern):
            record = self._path_to_record(path)
            made_by = owner(path)
            if made_by == record["username"]:
                records.append(record)
            else:
                forged.append((record, made_by))
                self.log.warning("Not collected: %s names %s but was submitted by %s", record["filename"],
                                 record["username"], made_by)
        self._note_forged(forged)
        with Gradebook(self.coursedir.db_url, self.coursedir.course_id) as gb:
            try:
                duedate = gb.find_assignment(self.coursedir.assignment_id).duedate
            except MissingEntry:
                duedate = None
        self.src_records = []
        for group in groupby(records, lambda item: item["username"]).values():
            newest_first = self._sort_by_timestamp(group)
            on_time = [r for r in newest_first if duedate is not None and r["timestamp"] <= duedate]
            self.src_records.append(on_time[0] if on_time and self.before_duedate else newest_first[0])

    def _note_forged(self, forged):
        if not forged:
            return
        path = os.path.join(self.coursedir.root, "forged.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["seen", "assignment", "named", "submitted_by", "folder"])
            for record, made_by in forged:
                writer.writerow([datetime.datetime.now().isoformat(timespec="seconds"), self.coursedir.assignment_id,
                                 record["username"], made_by, record["filename"]])
