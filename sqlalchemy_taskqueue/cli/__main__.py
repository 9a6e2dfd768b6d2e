"""``python -m sqlalchemy_taskqueue.cli`` is the ``taskqueue`` command."""

from . import main

main()
