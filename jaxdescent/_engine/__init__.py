"""The engine behind :func:`jaxdescent.fit` and :func:`jaxdescent.multistart` (internal).

- :mod:`.loop`: the compiled part (one step, and a chunk of steps as a while loop that also
  evaluates a run's final params: one program per configuration).
- :mod:`.driver`: the host side (chunks, progress, checkpoints, resume).
- :mod:`.checks`: checks of the user's problem before anything is compiled.
- :mod:`.cache`: the one cache of compiled programs.
"""
