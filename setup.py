"""Only what pyproject.toml cannot say: the optional C fan-out loop.

``optional=True``: on a machine without a C compiler or Python headers the
install still succeeds and the packet path uses its pure-Python loop
(odsmedia/media/native.py says which one runs).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("odsmedia.media._fanout", ["odsmedia/media/_fanout.c"], optional=True,
                             extra_compile_args=["-O2"])])
