"""``python -m web.screenshots``: the README's pictures of the panel, taken anew.

Starts a throwaway cluster (broker + 3 servers, tmp folder, free ports) and a
gateway, gives it a few users, posts, follows and messages over the HTTP API, and
photographs Home, Messages and Cluster in the OS's Chromium (``web/browser.py``),
plus Home at a phone's width. Writes ``docs/web-*.png``; about 30 s.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx

from common import cluster_status
from common.broker_client import BrokerClient
from common.config import load_config
from common.processes import ROOT, ProcessGroup, free_port_base
from web import browser, local

PASSWORD = "screenshot-pass"
USERS = ("alice", "bob", "carol", "dave")
POSTS = [("carol", "Trying the new web panel: no build step, no CDN, just the gateway."),
         ("dave", "Anyone up for a run tomorrow at 7?"),
         ("alice", "Replication lag under a millisecond on my laptop."),
         ("alice", "Lamport stamps on hover: a post's place in the cluster's order.")]
MESSAGES = [("bob", "alice", "Did you see the Cluster page? The clock chart is neat."),
            ("alice", "bob", "Yes! Kill a server and watch it go grey."),
            ("bob", "alice", "Doing it now…"),
            ("alice", "bob", "Coffee later?")]
CHART_SECONDS = 20
"""How long the Cluster page samples before its picture (its chart needs a history)."""


def seed(url: str) -> dict[str, httpx.Client]:
    clients = {}
    for name in USERS:
        client = httpx.Client(base_url=url, headers={"X-Requested-With": "screenshots"}, timeout=10)
        client.post("/api/register", json={"user": name, "password": PASSWORD}).raise_for_status()
        clients[name] = client
    for follower, target in (("bob", "alice"), ("bob", "carol"), ("alice", "bob"), ("carol", "alice")):
        clients[follower].post("/api/follow", json={"user": target}).raise_for_status()
    for author, text in POSTS:
        clients[author].post("/api/post", json={"text": text}).raise_for_status()
    for sender, to, text in MESSAGES:
        clients[sender].post("/api/dm", json={"to": to, "text": text}).raise_for_status()
    return clients


def signed_in(chromium, url: str, user: str, width: int = 1200, height: int = 760):
    context = chromium.new_context(base_url=url, viewport={"width": width, "height": height},
                                   device_scale_factor=1)
    page = context.new_page()
    page.goto("/")
    page.get_by_label("User name", exact=True).fill(user)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.get_by_role("button", name="Sign out", exact=True).wait_for()
    return context, page


def take(out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="web-screenshots-"))
    config = load_config(port_base=free_port_base(), data_dir=str(folder / "data"),
                         log_dir=str(folder / "logs"))
    group = ProcessGroup(config)
    shots = []
    try:
        group.start_broker()
        for server_id in (1, 2, 3):
            group.start_server(server_id)
        port = local.usable_port(0)
        local.start(group, port)
        local.wait_ready(port, alive=lambda: group.alive(local.NAME))
        url = f"http://127.0.0.1:{port}"
        wait_serving(config)
        clients = seed(url)
        with sync_playwright() as playwright:
            chromium = browser.launch(playwright)
            _, cluster = signed_in(chromium, url, "carol")
            cluster.get_by_role("link", name="Cluster", exact=True).click()
            _, home = signed_in(chromium, url, "bob")
            home.locator("#feed li").first.wait_for()
            shots.append(shot(home, out / "web-home.png"))
            _, chat = signed_in(chromium, url, "alice")
            chat.goto(url + "/#/messages/bob")
            chat.locator("#chat li").nth(len(MESSAGES) - 1).wait_for()
            shots.append(shot(chat, out / "web-messages.png"))
            _, phone = signed_in(chromium, url, "bob", width=390, height=760)
            phone.locator("#feed li").first.wait_for()
            shots.append(shot(phone, out / "web-home-phone.png"))
            deadline = time.monotonic() + CHART_SECONDS
            while time.monotonic() < deadline:          # samples for the chart, meanwhile a post a second
                clients["dave"].post("/api/post", json={"text": f"load {time.monotonic():.0f}"})
                cluster.wait_for_timeout(1000)
            group.kill("server-2")                       # so the picture shows a server gone
            cluster.locator('#servers tr[data-server="2"] td.phase').filter(has_text="gone").wait_for(timeout=10_000)
            shots.append(shot(cluster, out / "web-cluster.png", full_page=True))
            chromium.close()
        for client in clients.values():
            client.close()
    finally:
        group.stop_all()
    return shots


def wait_serving(config) -> None:
    import zmq
    from common import keys
    ctx = zmq.Context()
    try:
        key = None
        deadline = time.monotonic() + 15
        while key is None:
            try:
                key = keys.broker_public_key(config.data_dir)
            except keys.NoBrokerKey:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client = BrokerClient(ctx, config.endpoint(config.frontend_port), key, config=config)
        cluster_status.wait_serving(lambda: cluster_status.rows_by_id(client.status(1.0)),
                                    {1, 2, 3}, 30)
        client.close()
    finally:
        ctx.destroy(0)


def shot(page, path: Path, full_page: bool = False) -> Path:
    page.screenshot(path=str(path), full_page=full_page)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", flush=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs"), help="Folder for the PNGs (default docs/).")
    args = parser.parse_args()
    reason = browser.why_not()
    if reason:
        print(f"error: {reason}")
        return 1
    take(Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
