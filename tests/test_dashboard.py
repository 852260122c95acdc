"""The operator's dashboard: its JSON document (`GET /v1/admin/dashboard`) counts exactly what the
gateway served, and the page (`/ui`) shows it in a real headless Chromium — charts with the right
numbers, a policy reload, a non-admin key refused.

The browser is Debian's `chromium` driven by Playwright (never a downloaded browser); the
`chromium` fixture installs the package with apt-get when it is missing, as the Redis fixture does
for redis-server. Set SIGROUTE_SCREENSHOT_DIR to keep the page's screenshot (the README's picture
is made that way); otherwise it goes to the test's tmp dir.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import httpx
import orjson
import pytest
import yaml

from sigroute.gateway.app import create_app
from sigroute.gateway.http_server import server_options
from sigroute.gateway.serving import ServerThread
from sigroute.policies.loader import load_policy
from tests.conftest import apt_install, base_policy

ADMIN, USER = "sk-dash-admin-7731", "sk-dash-user-2208"
LEARN = {"linucb": {"alpha": 0.2, "features": ["bias", "length"], "sync_interval_s": 0.05}}


def key(secret: str, **options) -> dict:
    return {"key_sha256": hashlib.sha256(secret.encode()).hexdigest(), "tenant": "acme", **options}


def dashboard_policy(sim, *, extra_decision: bool = False) -> dict:
    decisions = [
        {"name": "learn", "priority": 20, "rules": "keyword:math", "models": ["alpha", "beta"], "algorithm": LEARN},
        {"name": "broken", "priority": 10, "rules": "keyword:broken", "models": ["gamma"]},
        {"name": "default", "models": ["alpha"], "cache": {"mode": "exact"}},
    ]
    if extra_decision:
        decisions.insert(0, {"name": "added-by-reload", "priority": 30, "rules": "keyword:reload", "models": ["beta"]})
    return base_policy(sim, signals={"keyword": {"math": {"any": ["integral"]}, "broken": {"any": ["broken"]},
                                                 "reload": {"any": ["reloaded"]}}},
                       decisions=decisions,
                       auth={"keys": [key(ADMIN, roles=["admin"]), key(USER)]})


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


class Served:
    """A gateway serving a policy file (so that it can be reloaded)."""

    def __init__(self, policy: dict, path):
        path.write_text(yaml.safe_dump(policy))
        self.path = path
        loaded = load_policy(path)
        self.app = create_app(loaded, policy_path=str(path))
        self.server = ServerThread(self.app, **server_options(loaded)).start()
        self.url = self.server.url
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def ask(self, content: str, secret: str = USER) -> httpx.Response:
        return self.http.post("/v1/chat/completions", headers=bearer(secret),
                              json={"model": "auto", "messages": [{"role": "user", "content": content}]})

    def close(self) -> None:
        self.http.close()
        self.server.stop()


@pytest.fixture
def served(sim, tmp_path):
    gateway = Served(dashboard_policy(sim), tmp_path / "policy.yaml")
    yield gateway
    gateway.close()


PROMPTS = {"learn": [f"integral number {i} of a polynomial" for i in range(6)],
           "default": ["tell me about owls", "tell me about owls", "tell me about cats", "what is a fjord"]}


def send_traffic(gateway: Served, sim) -> None:
    for prompt in PROMPTS["learn"] + PROMPTS["default"]:
        assert gateway.ask(prompt).status_code == 200
    sim.faults("gamma", error_rate=1.0)
    assert gateway.ask("this one is broken").status_code == 502


def test_the_document_counts_exactly_what_was_served(served, sim):
    send_traffic(served, sim)
    r = served.http.get("/v1/admin/dashboard", headers=bearer(ADMIN))
    assert r.status_code == 200
    doc = r.json()
    assert doc["object"] == "dashboard" and doc["totals"]["requests"] == 11 and doc["totals"]["errors"] == 1
    assert sum(bucket["requests"] for bucket in doc["traffic"]) == 11
    decisions = {d["decision"]: d for d in doc["decisions"]}
    assert decisions["learn"]["requests"] == 6 and sum(decisions["learn"]["models"].values()) == 6
    assert set(decisions["learn"]["models"]) <= {"alpha", "beta"}
    assert decisions["default"]["requests"] == 4 and decisions["default"]["cache_hits"] == 1
    assert decisions["default"]["models"] == {"alpha": 3, "cache": 1}
    assert decisions["broken"]["error_rate"] == 1.0 and decisions["default"]["error_rate"] == 0.0
    assert decisions["learn"]["latency_ms"]["p50"] > 0
    assert decisions["learn"]["cost_usd"] > 0     # the sim's models have prices and report usage
    (learning,) = doc["learning"]
    arms = {a["model"]: a for a in learning["arms"]}
    assert learning["decision"] == "learn" and set(arms) == {"alpha", "beta"}
    assert sum(a["requests"] for a in arms.values()) == 6
    assert sum(a["observations"] for a in arms.values()) == pytest.approx(6, abs=1e-6)
    for arm in arms.values():
        assert arm["low"] <= arm["estimate"] <= arm["high"]
    assert sum(sum(b["shares"].values()) for b in learning["share_over_time"]) == pytest.approx(
        len(learning["share_over_time"]))
    (cache,) = doc["cache"]
    assert cache["category"] == "default" and (cache["lookups"], cache["hits"]) == (4, 1)
    assert cache["entries"] >= 0 and cache["false_hits"] == 0
    upstreams = {u["model"]: u for u in doc["upstreams"]}
    assert upstreams["gamma"]["failed_attempts"] >= 1 and upstreams["alpha"]["failed_attempts"] == 0
    recent = doc["recent"]
    assert len(recent) == 11 and recent[0]["decision"] == "broken" and recent[0]["status"] == "502"
    assert {"default", "learn"} <= {d["name"] for d in doc["policy"]["decisions"]}
    text = orjson.dumps(doc).decode()
    for prompt in PROMPTS["learn"] + PROMPTS["default"]:   # never the text of a request
        assert prompt not in text


def test_only_admins_see_the_document(served):
    assert served.http.get("/v1/admin/dashboard").status_code == 401
    refused = served.http.get("/v1/admin/dashboard", headers=bearer(USER))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_only"


def test_with_auth_off_the_page_and_data_are_refused_unless_opened(sim, gateway_factory):
    policy = base_policy(sim)
    policy["server"].pop("open_without_auth")
    closed = gateway_factory(policy)
    for path in ("/ui", "/v1/admin/dashboard"):
        r = closed.http.get(path)
        assert r.status_code == 403 and "open_without_auth" in r.json()["error"]["message"]
    opened = gateway_factory(base_policy(sim))   # the test policy opens admin
    assert opened.http.get("/ui").status_code == 200
    assert opened.http.get("/v1/admin/dashboard").json()["object"] == "dashboard"
    assert opened.http.get("/ui/nothing.js").status_code == 404


# --------------------------------------------------------------------------------------------
# the page, in a real browser

def _chromium_binary() -> str:
    def find() -> str | None:
        return shutil.which("chromium") or shutil.which("chromium-browser")

    return apt_install("chromium", find, "install Debian's chromium package (`apt-get install -y chromium`)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=_chromium_binary(),
                                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


def test_the_page_shows_the_numbers_and_refuses_a_user_key(served, sim, browser, tmp_path):
    from playwright.sync_api import expect

    send_traffic(served, sim)
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    try:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(served.url + "/ui?refresh=300")
        expect(page.get_by_test_id("login")).to_be_visible()         # auth is on: a key is asked for
        page.get_by_test_id("key").fill(USER)
        page.get_by_test_id("connect").click()
        expect(page.get_by_test_id("error")).to_contain_text("may not see the dashboard")
        expect(page.locator("#board")).to_be_hidden()

        page.get_by_test_id("key").fill(ADMIN)
        page.get_by_test_id("connect").click()
        expect(page.locator("#board")).to_be_visible()
        expect(page.get_by_test_id("total")).to_have_text("11")
        expect(page.get_by_test_id("errors")).to_have_text("1")
        learn = page.locator('#decisions tr[data-decision="learn"]')
        expect(learn.locator('[data-field="requests"]')).to_have_text("6")
        default = page.locator('#decisions tr[data-decision="default"]')
        expect(default.locator('[data-field="cache_hits"]')).to_have_text("1")
        # the model-mix bar of "default": alpha 3 and the cache 1
        bar = {el.get_attribute("data-model"): int(el.get_attribute("data-count"))
               for el in default.locator("rect[data-model]").all()}
        assert bar == {"alpha": 3, "cache": 1}
        # the traffic chart's bars add up to every request, per decision
        drawn: dict[str, int] = {}
        for rect in page.locator("#traffic rect").all():
            name = rect.get_attribute("data-decision")
            drawn[name] = drawn.get(name, 0) + int(rect.get_attribute("data-count"))
        assert drawn == {"learn": 6, "default": 4, "broken": 1}
        # the bandit's arms: both drawn, their requests add up to the decision's
        arms = page.locator('.arms[data-decision="learn"] g[data-arm]').all()
        assert sorted(a.get_attribute("data-arm") for a in arms) == ["alpha", "beta"]
        assert sum(int(a.get_attribute("data-requests")) for a in arms) == 6
        assert all(a.get_attribute("data-estimate") for a in arms)
        expect(page.locator('.arms[data-decision="learn"] [data-testid="share-chart"] polyline')).to_have_count(2)
        expect(page.locator('#upstreams tr[data-model="gamma"] [data-field="failed_attempts"]')).not_to_have_text("0")
        expect(page.locator("#recent tr")).to_have_count(11)

        # a reload shows: the new decision is listed and the load time moves
        before = float(page.get_by_test_id("loaded-at").get_attribute("data-value"))
        served.path.write_text(yaml.safe_dump(dashboard_policy(sim, extra_decision=True)))
        assert served.http.post("/v1/admin/reload", headers=bearer(ADMIN)).status_code == 200
        expect(page.locator('#policy tr[data-decision="added-by-reload"]')).to_have_count(1)
        assert float(page.get_by_test_id("loaded-at").get_attribute("data-value")) > before
        shots = os.environ.get("SIGROUTE_SCREENSHOT_DIR") or str(tmp_path)
        os.makedirs(shots, exist_ok=True)
        page.screenshot(path=os.path.join(shots, "dashboard.png"), full_page=True)
        assert errors == []     # no script error on the page
    finally:
        page.close()
