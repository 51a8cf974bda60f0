"""The Conveyor client package: the wire models the broker itself uses, so client and server cannot drift."""
