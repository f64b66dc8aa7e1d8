"""The cloud fleet's instance-side pieces: the boot script the user data runs (boot.py, standard
library and boto3 only) and the operator's scale command (scale.py, cli.py)."""
