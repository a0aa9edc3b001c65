"""Salmon 3.3's modules as thin layers over mailrouter: ``from mailrouter.compat.salmon.routing
import route, Router`` where Salmon code wrote ``from salmon.routing import route, Router``."""
