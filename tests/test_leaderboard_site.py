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
from robustkit.leaderboard.site import build_site, render_entry, render_index
from robustkit.leaderboard.submission import build_submission, dumps

TIMEOUT = 30.0


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
    """Five finished runs under one directory: two Linf, a stochastic one, an L2 one, an unreliable one."""
    root = tmp_path_factory.mktemp("site-runs")
    clf = robustkit.create_classifier("tiny_cnn.digits", pretrained=True)
    common = dict(dataset="digits", n_examples=16, batch_size=16, checks=False, progress=False)
    robustkit.benchmark(clf, eps=0.05, attacks=["pgd"], attack_options={"pgd": {"steps": 2}}, run_dir=root / "weak",
                        **common)
    robustkit.benchmark(clf, eps=0.15, attacks=["pgd"], attack_options={"pgd": {"steps": 3}}, run_dir=root / "strong",
                        **common)
    robustkit.benchmark(Noisy(clf), eps=0.1, attacks=["pgd"], attack_options={"pgd": {"steps": 1}}, n_reeval=3,
                        run_dir=root / "noisy", **common)
    robustkit.benchmark(clf, eps=0.5, threat_model="L2", attacks=["pgd"], attack_options={"pgd": {"steps": 2}},
                        run_dir=root / "l2", **common)
    (root / "weak" / "leaderboard.json").write_text(json.dumps({
        "authors": "Ada Lovelace", "venue": "ICML 2024", "paper_title": "Weak <b>attacks</b>",
        "link": "https://example.org/weak", "footnote": "<script>alert('x')</script>", "additional_data": True,
        "external": {"robust_accuracy": 0.01, "footnote": "Broken by B.", "link": "javascript:alert(1)"}}))
    _make_unreliable(root / "strong", root / "zz-unreliable")
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
    assert index.count('<table class="board"') == 2
    assert 'id="board-digits-Linf"' in index and 'id="board-digits-L2"' in index
    assert index.count('class="badge stochastic"') == 1 and index.count('class="badge unreliable"') == 1
    # hostile strings are escaped; non-http links are not links
    weak = next(p for p in pages if p.name.startswith("Lovelace2024Weak")).read_text()
    assert "<script>alert" not in weak and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in weak
    assert "Weak &lt;b&gt;attacks&lt;/b&gt;" in index and 'href="javascript:' not in weak
    assert 'href="https://example.org/weak"' in weak
    flagged = next(p for p in pages if p.name.startswith("Flagged2024Run")).read_text()
    assert "Unreliable: a blocking sanity check failed (adversarial_validity)" in flagged
    noisy = next(p for p in pages if p.name.startswith("Noisy")).read_text()
    assert "Not admissible on RobustBench: randomized defense" in noisy and "Ranked by <b>worst of M</b>" in noisy


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
                "--disable-extensions", "--window-size=1400,1000",
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


def _check_board_and_entry(driver, url: str, expect_rows: int) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    _wait_ready(driver)
    table = "board-digits-Linf"
    headers = [th.text.replace("\n", " ").strip() for th in driver.find_elements(By.CSS_SELECTOR, f"#{table} thead th")]
    for h in ("Rank", "Model", "Paper", "Architecture", "Extra data", "Clean (%)", "Robust (%)", "External (%)",
              "Reported (%)", "Forward passes", "Single draw (%)", "Majority (%)", "Worst of M (%)", "n (95% CI)",
              "M", "EOT", "NFE", "GPU-h"):
        assert h in headers, (h, headers)
    rows = driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")
    assert len(rows) == expect_rows
    assert len(driver.find_elements(By.CSS_SELECTOR, "#board-digits-L2 tbody tr")) == 1
    assert driver.find_element(By.CSS_SELECTOR, f"#{table} .badge.stochastic").is_displayed()
    robust = [float(v) for v in _column(driver, table, "Robust (%)")]
    assert robust == sorted(robust, reverse=True)  # served ranked
    assert _column(driver, table, "Rank") == [str(i) for i in range(1, expect_rows + 1)]

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
    _click_header(driver, table, "eps")
    eps = [float(v) for v in _column(driver, table, "eps")]
    assert eps == sorted(eps)

    # open the stochastic entry from the table
    link = driver.find_element(By.XPATH, f"//table[@id='{table}']//tr[.//span[contains(@class,'stochastic')]]"
                                         "//a[contains(@class,'entry-link')]")
    name = link.text
    link.click()
    _wait_ready(driver)
    assert driver.find_element(By.ID, "entry-name").text.startswith(name)
    assert "stochastic" in driver.find_element(By.ID, "entry-name").text
    checks = driver.find_elements(By.CSS_SELECTOR, "#checks tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in checks] == ["adversarial_validity"]
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
    build_site(runs, site, strict=True)
    _check_board_and_entry(browser, (site / "index.html").as_uri(), expect_rows=4)


@contextmanager
def _server(db):
    from robustkit.leaderboard.server import bind_socket, create_app, make_server

    app = create_app(db)
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
        _check_board_and_entry(browser, f"http://127.0.0.1:{port}/", expect_rows=4)
        from selenium.webdriver.common.by import By

        browser.get(f"http://127.0.0.1:{port}/entries/1")
        _wait_ready(browser)
        assert "site-test" in browser.find_element(By.ID, "meta").text  # the submitter is shown
