"""Stand-in for Colab's `google.colab` module (google-colab is not on PyPI).

`.ci/colab` copies this folder into its virtualenv so that `import google.colab`
succeeds there, as it does on Colab: the notebooks' setup cell then takes its
Colab branch (install the course from PEFTLAB_COURSE_URL, then
peftlab.colab.setup) for real. The setup cell only imports it.
"""
