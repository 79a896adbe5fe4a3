"""jaxdescent's benchmarks against hand-written JAX loops and peer libraries.

Run ``python -m benchmarks [--quick] [--cases 1,2] [--json PATH]`` from the repository root;
:func:`benchmarks.run.main` is the entry point. Not part of the installed package.
"""
