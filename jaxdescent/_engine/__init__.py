"""The engine behind :func:`jaxdescent.solve`, :func:`jaxdescent.fit` and
:func:`jaxdescent.multistart` (internal).

- :mod:`.step`: one step (measure the loss and gradient, apply the update).
- :mod:`.core`: the core loop (a run's state, the status rules, one ``lax.while_loop``).
- :mod:`.adjoint`: derivatives of a solve (implicit at the solution, or unrolled).
- :mod:`.programs`: the compiled programs of the loop, and their compile options.
- :mod:`.cache`: the one cache of compiled programs, and the rule keying it.
- :mod:`.driver`: the host side of ``fit`` (chunks, progress, checkpoints, resume).
- :mod:`.checks`: checks of the user's problem before anything is compiled.
"""
