"""The CLI's command handlers: ``cli.py`` maps each subcommand to one function here
(``module:function``, imported only when that command runs). Handlers parse nothing
themselves: they take argparse's namespace, call the stage code, print, and return the exit
code; errors propagate to ``cli.main``, the only place that maps them to exit codes.
"""
