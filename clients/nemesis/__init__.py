"""``python run_all.py nemesis``: faults injected into a cluster spread over network
namespaces, and a check of what the users saw.

``topology.py`` builds (and always removes) the namespaces, veths, bridge and rules;
``cluster.py`` starts the broker and servers in them; ``workload.py`` (``python -m
clients.nemesis.workload``, run in the users' namespace) writes and reads as a few
users and records every request; ``monitor.py`` samples the broker's status;
``faults.py`` injects and heals each fault; ``history.py`` checks the history and
computes the figures, with the checks of ``write_checks.py`` and
``coordinator_checks.py`` on what ``server_logs.py`` reads of the servers' logs;
``run.py`` runs it all and prints the table.
"""
