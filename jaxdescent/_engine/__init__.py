"""The engine behind :func:`jaxdescent.fit` and :func:`jaxdescent.multistart` (internal).

- :mod:`.loop`: the compiled part (one step, a chunk of steps as a while loop, the finish).
- :mod:`.driver`: the host side (chunks, progress, checkpoints, resume).
- :mod:`.checks`: checks of the user's problem before anything is compiled.
- :mod:`.cache`: the one cache of compiled programs.
"""
