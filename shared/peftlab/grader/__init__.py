"""Grading the course's exercises with nbgrader, safely, in parallel.

| module | what |
|---|---|
| `settings` | every grading limit and knob, in one dataclass |
| `course` | the course's layout for nbgrader; nbgrader's config and API object, built here only |
| `exercises` | release `exercises/` from `solutions/`; the CI gates (`python -m peftlab.grader.exercises`) |
| `intake` | import a class's folders and zip files, regular files only |
| `inspect` | check a notebook (size, depth, JSON, nbformat, nbgrader metadata, graded cells) before anything reads it |
| `preprocessors` | nbgrader preprocessors: grading parameters, canaries, probe cells, output cap, timings |
| `probes` | points decided in the grader: probe files, the kernel's side, comparators, `judge` |
| `sandbox` | run a kernel under bubblewrap with resource limits |
| `worker` | `autograde(job)`, the one grading path; `python -m peftlab.grader.worker JOB.json` |
| `forkserver` | the batch's workers, forked from one process that imported the grader once (`warm`) |
| `outcome` | a graded submission: status, reason, points |
| `feedback` | HTML feedback with hidden tests removed |
| `gradebook` | nbgrader's gradebook as the record; the CSV |
| `batch` | a class in parallel; the `peftlab-grade` command (`python -m peftlab.grader`) |
"""
