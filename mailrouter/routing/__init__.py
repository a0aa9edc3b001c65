"""Routing: the decorators handler modules use, and the Router that runs them per recipient."""
