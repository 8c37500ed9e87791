"""The shipped config files (installed as ``jaxcls.configs``); see default.py for every key."""
