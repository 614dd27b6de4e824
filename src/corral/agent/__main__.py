"""``python -m corral.agent``: run the reference agent (see ``--help``)."""

from corral.agent.command import main

raise SystemExit(main())
