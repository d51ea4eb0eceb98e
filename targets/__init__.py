"""Hardware targets: the framework (:mod:`snncc.targets.base`: ``Target``, ``Constraints``, ``Violation``, the
registry), bundles (:mod:`snncc.targets.bundle`), emit and verify (:mod:`snncc.targets.emit`), the command line
(:mod:`snncc.targets.command`) and the targets themselves (:mod:`snncc.targets.loihi`). Importing this package
imports no target; :func:`~snncc.targets.base.get_target` loads them on first use."""
