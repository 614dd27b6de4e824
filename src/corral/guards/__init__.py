"""Guards: runaway agent work noticed from the platform side and put in a box.

``model`` (signals, detectors, findings, actions), ``detectors`` (the built-in ones),
``incidents`` (what a firing opens, who owns it, its timeline), ``engine`` (the gateway
hooks and span sink that feed detectors off the request path, and the actions), and
``webhooks`` (teams told of their incidents). docs/guards.md is the guide.
"""
