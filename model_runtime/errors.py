"""The base of errors that are the operator's to fix (a bad setting, a missing file, a refused
conversion): the CLI prints their message and exits 2, without a traceback."""


class OperatorError(Exception):
    pass
