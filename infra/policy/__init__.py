"""The fleet's guardrails: rules.py (the checks), pack.py and __main__.py (the Pulumi policy pack)."""
