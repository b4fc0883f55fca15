"""The compiled parts of vml (the rest is in pyproject.toml): a guest's find listing and its
tar's headers, parsed in C (vml/areas/capture/_listing.c, vml/areas/_tarheader.c); each has
its Python twin, used where it is not built. gcc and Python's headers come from scripts/setup,
which checks that both were built; elsewhere a failed build leaves vml whole, only slower
(`optional`: setuptools warns and goes on)."""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Werror"]

setup(ext_modules=[
    Extension("vml.areas.capture._listing", ["vml/areas/capture/_listing.c"], extra_compile_args=FLAGS, optional=True),
    Extension("vml.areas._tarheader", ["vml/areas/_tarheader.c"], extra_compile_args=FLAGS, optional=True),
])
