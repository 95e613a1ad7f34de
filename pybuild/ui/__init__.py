"""Progress front-ends beyond the plain one: `rawjson` (machine-readable) and `tty` (live rich display).

Import them through `pybuild.progress.make_reporter`; `rich` is only imported
when the tty display is chosen.
"""
