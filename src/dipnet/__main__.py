"""`python -m dipnet` (and `torchrun -m dipnet`) runs the command line.

``python -m`` puts the working folder first on ``sys.path``, so a ``yaml.py`` or a received
``evil.py`` there would be imported as if it were a library. It is taken off before any
subcommand runs and appended again only when the user allows code (``--allow-code``, or a
``--model package.module:factory`` flag): see `dipnet._util.trust`.
"""

import sys

from dipnet._util.trust import strip_working_folder

strip_working_folder()

from dipnet.cli import main  # noqa: E402  (after the path is made safe)

sys.exit(main())
