"""Jobs: their states and transition rules, the service that accepts and queries them, their events."""
