"""The command line, ``python -m tagging COMMAND``: the parser and the commands (:mod:`.main`),
account commands (:mod:`.users`), weird-result commands (:mod:`.weird`), progress bars
(:mod:`.console`) and ``up``, what ``make run`` runs (:mod:`.up`).

A command prints one line and exits non-zero on a Tagdesk error, never a traceback.
"""
