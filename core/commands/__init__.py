"""One module per ``ipt`` subcommand: its flags (``add_arguments``), what it prints and the files it writes
(``run``). No algorithms live here: each command calls the library rooms beside this one."""
