"""Actions: matching stored events against each team's actions, recording matches, and firing hooks."""
