"""Leaderboard web pages: static build from run directories and the live server, in a real browser.

The browser is Debian's headless Chromium (packages ``chromium`` and ``chromium-driver``, installed by
``make test`` when missing) driven by Selenium; nothing is downloaded. Without them these tests skip
with the reason, except under CI (``CI=true``), where they fail loudly.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from contextlib import contextmanager

import pytest
import torch

import robustkit
from robustkit import cli
from robustkit.leaderboard import EntryError, load_run_entry
from robustkit.leaderboard.rules import RankingRules
from robustkit.leaderboard.site import build_site, render_entry, render_index
from robustkit.leaderboard.submission import build_submission, dumps

TIMEOUT = 30.0
# RobustBench's rules scaled to 16-example tiny runs: what they rank is what these tests can afford to make
TINY_RULES = RankingRules(test_set_sizes={"digits": 16}, adaptive_always=True, adaptive_attacks=("pgd",),
                          adaptive_steps=1, adaptive_eot=1)
CHEAP_CHECKS = dict(checks=True, probe_size=8, check_options={"steps": 2, "eot": 2, "square_queries": 20})


class Noisy(robustkit.Classifier):
    def __init__(self, base):
        super().__init__(10, (1, 8, 8), robustkit.DefenseTraits(stochastic=True, gradient="exact"))
        self.base = base

    def logits(self, x):
        out = self.base(x)
        return out + 1.5 * torch.randn_like(out)


def _make_unreliable(src, dst):
    """A consistent copy of ``src`` in which one adversarial example is invalid and the run is flagged."""
    run = shutil.copytree(src, dst)
    shard = run / "shards" / "shard_00000.jsonl"
    lines = [json.loads(s) for s in shard.read_text().splitlines()]
    target = next(r for r in lines if r["attacks"]["pgd"] is not None)
    target["attacks"]["pgd"]["valid"] = False
    shard.write_text("".join(json.dumps(r) + "\n" for r in lines))
    rec = json.loads((run / "record.json").read_text())
    check = next(c for c in rec["checks"] if c["name"] == "adversarial_validity")
    check.update(status="fail", message="1 adversarial example(s) lie outside the eps-ball")
    rec["unreliable"] = True
    (run / "record.json").write_text(json.dumps(rec))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Five finished runs under one directory. Under TINY_RULES: eps 0.1 holds two ranked entries (one
    stochastic) and one unranked (a failed check); eps 0.05 and L2 0.5 one unranked each (checks skipped)."""
    root = tmp_path_factory.mktemp("site-runs")
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    common = dict(dataset="digits", n_examples=16, batch_size=16, progress=False)
    robustkit.benchmark(clf, eps=0.05, attacks=["pgd"], attack_options={"pgd": {"steps": 2}}, run_dir=root / "weak",
                        checks=False, **common)
    robustkit.benchmark(clf, eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 3}}, run_dir=root / "strong",
                        **CHEAP_CHECKS, **common)
    robustkit.benchmark(Noisy(clf), eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 1}}, n_reeval=3,
                        run_dir=root / "noisy", **CHEAP_CHECKS, **common)
    robustkit.benchmark(clf, eps=0.5, threat_model="L2", attacks=["pgd"], attack_options={"pgd": {"steps": 2}},
                        run_dir=root / "l2", checks=False, **common)
    robustkit.benchmark(clf, eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 4}}, run_dir=root / "other",
                        **CHEAP_CHECKS, **common)
    (root / "weak" / "leaderboard.json").write_text(json.dumps({
        "authors": "Ada Lovelace", "venue": "ICML 2024", "paper_title": "Weak <b>attacks</b> " + "Unbreakable" * 12,  # a long word must wrap, not widen
        "link": "https://example.org/weak", "footnote": "<script>alert('x')</script>", "additional_data": True,
        "external": {"robust_accuracy": 0.01, "footnote": "Broken by B.", "link": "javascript:alert(1)"}}))
    _make_unreliable(root / "other", root / "zz-unreliable")
    shutil.rmtree(root / "other")
    (root / "zz-unreliable" / "leaderboard.json").write_text(json.dumps({"name": "Flagged2024Run"}))
    return root


# ------------------------------------------------------------------------------------- without a browser

def test_static_build(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    site = tmp_path / "site"
    assert cli.main(["leaderboard", "build", str(runs), "--out", str(site)]) == 0
    assert capsys.readouterr().out.strip() == str(site / "index.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # nothing else written
    index = (site / "index.html").read_text()
    pages = sorted((site / "entries").glob("*.html"))
    assert len(pages) == 5 and (site / "board.js").read_text().startswith("// robustkit leaderboard")
    # one board per (dataset, threat model, eps); RobustBench's rules rank none of these tiny runs
    for board in ("board-digits-Linf-0p05", "board-digits-Linf-0p1", "board-digits-L2-0p5"):
        assert f'<section class="board-section" id="{board}"' in index
    assert index.count('<section class="board-section"') == 3
    assert index.count('class="board ranked"') == 0 and index.count('class="board unranked"') == 3
    assert index.count("No entry meets the ranking rules yet.") == 3
    assert "n = 16 of the test split, not the full digits test set (360)" in index
    assert "sanity checks skipped (--no-checks)" in index and "sanity check(s) failed: adversarial_validity" in index
    assert index.count('class="badge stochastic"') == 1 and index.count('class="badge unreliable"') == 1
    # hostile strings are escaped; non-http links are not links
    weak = next(p for p in pages if p.name.startswith("Lovelace2024Weak")).read_text()
    assert "<script>alert" not in weak and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in weak
    assert "Weak &lt;b&gt;attacks&lt;/b&gt;" in index and 'href="javascript:' not in weak
    assert 'href="https://example.org/weak"' in weak
    flagged = next(p for p in pages if p.name.startswith("Flagged2024Run")).read_text()
    assert "Unreliable: a blocking sanity check failed (adversarial_validity)" in flagged
    assert "Not ranked on the board digits · Linf · eps = 0.1: " in flagged
    noisy = next(p for p in pages if p.name.startswith("Noisy")).read_text()
    assert "Not admissible on RobustBench: randomized defense" in noisy and "Ranked by <b>worst of M</b>" in noisy


def test_the_same_rules_rank_on_both_sites(runs, tmp_path):
    """Under TINY_RULES the eps-0.1 board ranks two entries (ordered by board accuracy) and lists the flagged
    one below with its reason; the server's page, given the same rules, shows the same boards."""
    site = tmp_path / "site"
    build_site(runs, site, strict=True, rules=TINY_RULES)
    index = (site / "index.html").read_text()
    ranked = index.split('id="board-digits-Linf-0p1-ranked"')[1].split("</table>")[0]
    unranked = index.split('id="board-digits-Linf-0p1-unranked"')[1].split("</table>")[0]
    assert ranked.count("<tr data-name=") == 2 and unranked.count("<tr data-name=") == 1
    assert 'data-name="Flagged2024Run" data-problems="checks_failed"' in unranked
    rows = [load_run_entry(runs / r)[0] for r in ("strong", "noisy")]
    first, second = sorted(rows, key=lambda e: -e.board_accuracy)
    assert ranked.index(f'data-name="{first.name}"') < ranked.index(f'data-name="{second.name}"')
    assert 'id="board-digits-Linf-0p05-ranked"' not in index  # checks skipped: not ranked, whatever the rules
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from robustkit.leaderboard.server import create_app

    app = create_app(tmp_path / "board.db", rules=TINY_RULES)
    token = app.state.store.create_token("site")
    with TestClient(app) as client:
        for run in ("weak", "strong", "noisy", "l2", "zz-unreliable"):
            entry, examples = load_run_entry(runs / run)
            r = client.post("/api/submissions", content=dumps(build_submission(entry, examples)),
                            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
            assert r.status_code == 201, r.text
        served = client.get("/").text
    for table in ("board-digits-Linf-0p1-ranked", "board-digits-Linf-0p1-unranked", "board-digits-Linf-0p05-unranked",
                  "board-digits-L2-0p5-unranked"):
        rows_static = index.split(f'id="{table}"')[1].split("</table>")[0].count("<tr data-name=")
        assert served.split(f'id="{table}"')[1].split("</table>")[0].count("<tr data-name=") == rows_static, table


def test_score_model_and_classifier_tell_purification_rows_apart(runs):
    """Two purification entries that differ only by their score model must not look identical."""
    import dataclasses

    e, _ = load_run_entry(runs / "strong")
    a = dataclasses.replace(e, name="Purified", classifier="tiny_cnn.digits", score_model="tiny_unet.digits")
    b = dataclasses.replace(a, score_model="tiny_dit.digits", defense_digest="c" * 64)
    page = render_index([{"entry": a.to_dict()}, {"entry": b.to_dict()}, {"entry": e.to_dict()}], link=lambda r: "#",
                        script_url="board.js")
    rows = [r for r in page.split("<tr ")[1:] if 'data-name="Purified"' in r]
    plain = [r for r in page.split("<tr ")[1:] if f'data-name="{e.name}"' in r]
    assert len(plain) == 1 and "score model" not in plain[0] and "classifier:" not in plain[0]
    assert len(rows) == 2 and rows[0] != rows[1]
    assert sum("score model: tiny_unet.digits" in r for r in rows) == 1
    assert sum("score model: tiny_dit.digits" in r for r in rows) == 1
    assert all("classifier: tiny_cnn.digits" in r for r in rows)
    entry_page = render_entry({"entry": b.to_dict()}, index_url="/", script_url="board.js")
    assert "<td>Score model</td><td>tiny_dit.digits</td>" in entry_page and b.identity() in entry_page


def test_static_build_skips_and_errors(runs, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(runs / "weak", src / "ok")
    shutil.copytree(runs / "strong", src / "unfinished")
    (src / "unfinished" / "shards" / "shard_00000.jsonl").unlink()
    assert cli.main(["leaderboard", "build", str(src), "--out", str(tmp_path / "site")]) == 0
    captured = capsys.readouterr()
    assert "robustkit: warning: skipped" in captured.err and "shard_00000.jsonl is missing" in captured.err
    assert len(list((tmp_path / "site" / "entries").glob("*.html"))) == 1
    assert cli.main(["leaderboard", "build", str(src), "--out", str(tmp_path / "s2"), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shard_00000.jsonl is missing" in err[0] and not (tmp_path / "s2").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(EntryError, match="no record.json"):
        build_site(tmp_path / "empty", tmp_path / "s3")


def test_render_functions_share_one_entry_view(runs):
    entry, examples = load_run_entry(runs / "noisy")
    row = {"entry": entry.to_dict(), "submitter": "alice", "submitted_utc": "2026-01-01T00:00:00+00:00"}
    page = render_entry(row, index_url="/", script_url="/static/board.js")
    assert "alice, 2026-01-01T00:00:00+00:00" in page and 'id="accuracy-plot"' in page
    assert page.count("<rect") == 3 * 3  # clean, after pgd, robust x three protocols
    assert "No entries yet." in render_index([], link=lambda r: "#", script_url="board.js")


# ----------------------------------------------------------------------------------------- the browser

def _browser_unavailable() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        return "Debian package 'chromium' is not installed (make test installs it when run as root)"
    if not shutil.which("chromedriver"):
        return "Debian package 'chromium-driver' is not installed (make test installs it when run as root)"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    reason = _browser_unavailable()
    if reason:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"browser tests cannot run under CI: {reason}", pytrace=False)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--window-size=1280,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_ready(driver):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, TIMEOUT).until(
        lambda d: d.execute_script("return document.documentElement.getAttribute('data-sortable')") == "ready")


def _column(driver, table_id: str, header: str) -> list:
    return driver.execute_script("""
        var t = document.getElementById(arguments[0]);
        var heads = Array.prototype.map.call(t.tHead.rows[0].cells, function (c) { return c.textContent.trim(); });
        var i = heads.indexOf(arguments[1]);
        if (i < 0) { return null; }
        return Array.prototype.map.call(t.tBodies[0].rows,
                                        function (r) { return r.cells[i].getAttribute('data-sort'); });
    """, table_id, header)


def _click_header(driver, table_id: str, header: str) -> None:
    from selenium.webdriver.common.by import By

    for th in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} thead th"):
        if th.text.replace("\n", " ").strip() == header:
            th.find_element(By.TAG_NAME, "button").click()
            return
    raise AssertionError(f"no header {header!r} in #{table_id}")


def _check_layout(driver, shots: str | None = None) -> None:
    """At 1280 px: no horizontal scrolling, one board per eps, the unranked lists with their reasons."""
    from selenium.webdriver.common.by import By

    assert driver.execute_script("return window.innerWidth") == 1280
    widths = driver.execute_script("return [document.documentElement.scrollWidth, document.body.scrollWidth, "
                                   "Math.max.apply(null, Array.prototype.map.call(document.querySelectorAll('table'), "
                                   "function (t) { return t.getBoundingClientRect().right; }))]")
    assert max(widths) <= 1280, widths  # nothing sticks out: the page never scrolls sideways
    sections = driver.find_elements(By.CSS_SELECTOR, "section.board-section")
    boards = [(s.get_attribute("id"), s.get_attribute("data-eps")) for s in sections]
    assert boards == [("board-digits-Linf-0p05", "0.05"), ("board-digits-Linf-0p1", "0.1"),
                      ("board-digits-L2-0p5", "0.5")], boards  # Linf first, then by eps
    for section in sections:  # every table of a board is that board's eps only
        eps_cells = section.find_elements(By.CSS_SELECTOR, "table.ranked, table.unranked")
        assert eps_cells, section.get_attribute("id")
    title = driver.find_element(By.ID, "board-digits-Linf-0p1-unranked-title")
    assert title.is_displayed() and title.text == "Not ranked (1)"
    why = driver.find_element(By.CSS_SELECTOR, "#board-digits-Linf-0p1-unranked td.why")
    assert why.is_displayed() and "sanity check(s) failed: adversarial_validity" in why.text
    if shots:
        driver.save_screenshot(shots)


def _check_board_and_entry(driver, url: str, expect_rows: int, shots: str | None = None) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    _wait_ready(driver)
    _check_layout(driver, shots)
    table = "board-digits-Linf-0p1-ranked"
    headers = [th.text.replace("\n", " ").strip() for th in driver.find_elements(By.CSS_SELECTOR, f"#{table} thead th")]
    assert headers == ["Rank", "Model", "Paper", "Clean (%)", "Robust (%)", "Worst of M (%)", "n", "Cost"], headers
    rows = driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")
    assert len(rows) == expect_rows
    assert driver.find_element(By.CSS_SELECTOR, f"#{table} .badge.stochastic").is_displayed()
    robust = [float(v) for v in _column(driver, table, "Robust (%)")]
    assert robust == sorted(robust, reverse=True)  # served ranked
    assert _column(driver, table, "Rank") == [str(i) for i in range(1, expect_rows + 1)]
    worst = _column(driver, table, "Worst of M (%)")  # only the stochastic entry has one
    assert sorted(float(v) >= 0 for v in worst) == [False, True]

    assert len(set(robust)) > 1  # otherwise sorting could not be seen
    _click_header(driver, table, "Robust (%)")  # ascending
    assert [float(v) for v in _column(driver, table, "Robust (%)")] == sorted(robust)
    th = driver.find_element(By.XPATH, f"//table[@id='{table}']//th[normalize-space(.)='Robust (%)']")
    assert th.get_attribute("aria-sort") == "ascending"
    _click_header(driver, table, "Robust (%)")  # and back
    assert [float(v) for v in _column(driver, table, "Robust (%)")] == sorted(robust, reverse=True)
    assert th.get_attribute("aria-sort") == "descending"
    _click_header(driver, table, "Model")
    names = [n.lower() for n in _column(driver, table, "Model")]
    assert names == sorted(names)

    # open the stochastic entry from the table
    link = driver.find_element(By.XPATH, f"//table[@id='{table}']//tr[.//span[contains(@class,'stochastic')]]"
                                         "//a[contains(@class,'entry-link')]")
    name = link.text
    link.click()
    _wait_ready(driver)
    assert driver.find_element(By.ID, "entry-name").text.startswith(name)
    assert "stochastic" in driver.find_element(By.ID, "entry-name").text
    assert driver.find_element(By.ID, "ranking").text == "Ranked on the board digits · Linf · eps = 0.1."
    assert driver.execute_script("return document.documentElement.scrollWidth") <= 1280
    if shots:
        driver.save_screenshot(shots.replace(".png", "-entry.png"))
    checks = [r.find_elements(By.TAG_NAME, "td")[0].text for r in driver.find_elements(By.CSS_SELECTOR, "#checks tbody tr")]
    assert "adversarial_validity" in checks and "stochasticity" in checks
    assert len(driver.find_elements(By.CSS_SELECTOR, "#attacks tbody tr")) == 1
    plot = driver.find_element(By.ID, "accuracy-plot")
    assert plot.is_displayed() and plot.size["width"] > 300 and len(plot.find_elements(By.TAG_NAME, "rect")) == 9
    assert "worst of M" in driver.find_element(By.ID, "results").text
    assert len(driver.find_elements(By.CSS_SELECTOR, "#outcomes tbody tr")) >= 2
    driver.find_element(By.ID, "back").click()
    _wait_ready(driver)
    assert len(driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")) == expect_rows
    severe = [m for m in driver.get_log("browser") if m.get("level") == "SEVERE"]
    assert severe == [], severe  # no script errors, no CSP violations


def test_static_site_in_browser(runs, tmp_path, browser):
    site = tmp_path / "site"
    build_site(runs, site, strict=True, rules=TINY_RULES)
    _check_board_and_entry(browser, (site / "index.html").as_uri(), expect_rows=2,
                           shots=os.environ.get("ROBUSTKIT_SCREENSHOTS") and
                           os.path.join(os.environ["ROBUSTKIT_SCREENSHOTS"], "static.png"))


@contextmanager
def _server(db):
    from robustkit.leaderboard.server import bind_socket, create_app, make_server

    app = create_app(db, rules=TINY_RULES)
    sock = bind_socket("127.0.0.1", 0)
    server = make_server(app, sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        yield sock.getsockname()[1], app.state.store
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()


def test_served_pages_in_browser(runs, tmp_path, browser):
    pytest.importorskip("starlette")
    import http.client

    with _server(tmp_path / "board.db") as (port, store):
        token = store.create_token("site-test")
        for run in ("weak", "strong", "noisy", "l2", "zz-unreliable"):
            entry, examples = load_run_entry(runs / run)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
            conn.request("POST", "/api/submissions", body=dumps(build_submission(entry, examples)),
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
            assert conn.getresponse().status == 201
            conn.close()
        _check_board_and_entry(browser, f"http://127.0.0.1:{port}/", expect_rows=2)
        from selenium.webdriver.common.by import By

        browser.get(f"http://127.0.0.1:{port}/entries/1")
        _wait_ready(browser)
        assert "site-test" in browser.find_element(By.ID, "meta").text  # the submitter is shown
