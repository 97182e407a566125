"""``python run_all.py bench``: the benchmark's run (``run.py``), its phases
(``phases.py``) and report (``report.py``), its clusters (``cluster.py``), its load
processes (``load.py``), the echo servers of its baseline (``echo.py``, ``python -m
clients.bench.echo``) and the CPU time it reads from /proc (``cpu.py``)."""
