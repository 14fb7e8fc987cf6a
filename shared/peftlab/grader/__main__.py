"""`python -m peftlab.grader ...` is `peftlab-grade ...`: grade a class (see peftlab.grader.batch)."""

import sys

from .batch import main

sys.exit(main())
