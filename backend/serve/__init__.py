"""The Backend facade the UI codes against, and its views."""
