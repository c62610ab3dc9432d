"""The `lmforge` command line: one module per verb group, each thin (parse, call the Python API, print)."""
