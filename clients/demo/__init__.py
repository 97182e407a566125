"""``python run_all.py demo``: the narrated demo (``run.py``), its bot users
(``bots.py``, ``python -m clients.demo.bots``), what it watches (``watch.py``),
how it tells it (``narrator.py``) and its final check and summary (``check.py``)."""
