"""The web panel and HTTP API: a gateway that is one more client of the broker
(``python -m web --port 8080``); see README.md, "The web panel"."""
