"""The `lmforge` command line (applications): one module per verb group, each thin (parse, call the Python API,
print). A verb imports its work inside its run function, so that `lmforge --help` never loads torch."""
