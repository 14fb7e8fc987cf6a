"""Grading the course's exercises with nbgrader, safely, in parallel.

The modules in the order a submission meets them (intake -> downloads ->
assignment -> batch -> worker -> kernel -> sandbox -> launcher -> probes ->
gradebook -> feedback -> export), then what they share:

| module | what |
|---|---|
| `intake` | import a class's submissions: each file found given to a student or rejected, one row with its fate (the intake report) |
| `downloads` | every file of a download: folders walked, zip files listed (their names' encodings), regular files only, streamed |
| `layouts` | who submitted a file, from the names LMSs, nbgrader, JupyterHub and Colab give it |
| `roster` | the class list: LMS ids, names and logins mapped to the course's ids |
| `repair` | re-attach nbgrader metadata that an editor stripped, where unambiguous |
| `assignment` | an assignment ready to grade: scratch course, model, probe file, the seed rule, the expected values' cache, the `Job` factory |
| `batch` | a class in parallel; the `peftlab-grade` command (`python -m peftlab.grader`) |
| `cluster` | the same grading on a Dask cluster (`--cluster local:N`, `--scheduler ADDR`): one task per submission, the head records |
| `shards` | a class graded in N independent slices (`--shard i/N`: a Slurm array, a Kubernetes Job), then `merge`d |
| `slot` | one submission on one slot: its order written, its worker forked, its wall limit, its outcome read (`collect`) |
| `forkserver` | the batch's workers, forked from one process that imported the grader once (`warm`) |
| `warm` | what every worker needs, imported once by the fork server |
| `worker` | `autograde(job)`, the one grading path; `python -m peftlab.grader.worker JOB.json` |
| `inspect` | check a notebook (size, depth, JSON, nbformat, nbgrader metadata, graded cells) before anything reads it |
| `kernel` | the sandboxed kernel's Jupyter kernel manager (`kernel_manager_class`) and its drained output |
| `sandbox` | the sandbox policy of a kernel (`policy_for`) and bubblewrap's command line for it (`wrap`) |
| `launcher` | the kernel's launcher (`python -m peftlab.grader.launcher`): resource limits, seccomp filter, then bubblewrap |
| `uids` | the user ids a root grader's kernels run as, one per worker, claimed per batch (`claim_uids`); their socket folders |
| `preprocessors` | nbgrader preprocessors: grading parameters, canaries, probe cells, output cap, timings |
| `progress` | how far a notebook got: the running cell and the cells before it, for the feedback of one stopped at the wall limit |
| `probes` | points decided in the grader: probe files, the kernel's side, comparators, `judge` |
| `outcome` | a graded submission: status, reason, points |
| `gradebook` | nbgrader's gradebook as the record |
| `feedback` | HTML feedback with hidden tests removed (`render`: the page itself) |
| `render` | feedback pages that render offline, student content cleaned |
| `export` | the grades CSV, the LMS imports, the class summary |
| `exercises` | release `exercises/` from `solutions/`; the CI gates and one notebook's check (`python -m peftlab.grader.exercises`) |
| `formgrader` | nbgrader's formgrader for written answers, with its bypassing buttons switched off |
| `course` | the course's layout for nbgrader; nbgrader's config and API object, built here only |
| `settings` | every grading limit and knob, in one dataclass |
"""
