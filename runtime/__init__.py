"""Containers: `pybuild run` and the lifecycle commands (ps, logs, stop, kill, rm, exec, volume).

``containers``: the records under ``$PYBUILD_ROOT/containers/<id>/`` (config, state, overlay
upper/work dirs, log) and the name registry; ``launch``: turns a record into a sandbox run and
runs it (in the foreground or in the detached ``supervisor``); ``volumes``: named volumes under
``$PYBUILD_ROOT/volumes/``; ``options``: pure parsing of run's flags into a container config;
``tty``: the pseudo-terminal relay of ``-t``.  ``network`` (bridge networking) is separate.
"""
