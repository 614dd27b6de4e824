"""Review gates: a run's change passes policy checks, its code owners, reviewer agents and
people before it is delivered, and the agent that wrote it never approves it
(docs/review.md)."""
